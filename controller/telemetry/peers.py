"""The fleet comparison of quality drift: each device's last judged windows of a model against its peers', where peers
are the other devices serving the same version on the same hardware class (the measured arch/accelerator/board/ram_gb
of protocol/labels.py: a GPU board's outputs may differ from a CPU box's for the same inputs, which is not drift).

Within a class, each device is first judged against all its peers merged; a device that differs then weighs in the
others' peers too (all may flag), so the flagged device that moved most is left out of the others' peers and all are
judged again, until no new device flags or two remain: the devices still flagged are the ones that differ. Two
devices that differ from each other cannot say which of them moved: that needs a third of the class.
"""

from __future__ import annotations

from typing import Any

from controller.telemetry.drift import DriftSettings, Verdict, drift_verdict
from controller.telemetry.summary import Summary

Chunk = tuple[str, str, Summary]  # device, version, its last judged windows


def _merged(chunks: list[Chunk]) -> Summary | None:
    merged: Summary | None = None
    for _, _, chunk in chunks:
        merged = merged.merged(chunk) if merged else chunk
    return merged


def _judge(members: list[Chunk], peers_of: dict[str, list[Chunk]], settings: DriftSettings) -> dict[str, Verdict]:
    verdicts = {}
    for device, _, chunk in members:
        peers = _merged(peers_of[device])
        if peers is not None:
            verdicts[device] = drift_verdict(peers, chunk, settings)
    return verdicts


def compare(chunks: list[Chunk], classes: dict[str, str], settings: DriftSettings) -> dict[str, Any]:
    """{"devices": one entry per device (its verdict against its peers), "classes": one per (hardware class,
    version) naming the devices that differ from their peers}."""
    groups: dict[tuple[str, str], list[Chunk]] = {}
    for item in sorted(chunks, key=lambda c: c[0]):
        groups.setdefault((classes.get(item[0], "unknown"), item[1]), []).append(item)
    devices: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for (hw_class, version), members in sorted(groups.items()):
        ids = [m[0] for m in members]
        group: dict[str, Any] = {"hw_class": hw_class, "version": version, "devices": ids, "differs": []}
        summary.append(group)
        everyone = {m[0]: [p for p in members if p[0] != m[0]] for m in members}
        verdicts = _judge(members, everyone, settings)
        suspects: set[str] = set()
        while len(members) - len(suspects) > 2:  # leave the one that differs most out of the others' peers
            flagged = [d for d, v in verdicts.items() if v.flagged and d not in suspects]
            if not flagged:
                break
            suspects.add(max(flagged, key=lambda d: verdicts[d].score))
            peers_of = {d: [p for p in everyone[d] if p[0] not in suspects] or everyone[d] for d in ids}
            verdicts = _judge(members, peers_of, settings)
        flagged = [d for d in ids if d in verdicts and verdicts[d].flagged]
        if len(members) == 1:
            group["note"] = "no other device of this hardware class serves this version"
        elif len(members) == 2 and len(flagged) == 2:
            group["note"] = "the two devices differ from each other: a third device of the class would tell which moved"
        else:
            group["differs"] = flagged
            if flagged:
                moved = verdicts[flagged[0]].moved
                group["note"] = f"{', '.join(flagged)} differ{'s' if len(flagged) == 1 else ''} from the peers"
                group["note"] += f": {moved[0]}" if moved else ""
        for device, _, window in members:
            entry: dict[str, Any] = {"device": device, "version": version, "hw_class": hw_class, "rows": window.count}
            verdict = verdicts.get(device)
            if verdict is None:
                entry["reason"] = "no other device of its hardware class serves this version"
            else:
                entry.update(verdict.to_json())
                entry["state"] = "drift" if verdict.flagged else "ok" if verdict.judged else verdict.reason
                entry["peer_rows"] = verdict.baseline_rows
                entry["differs"] = device in group["differs"]
            devices.append(entry)
    return {"devices": devices, "classes": summary}
