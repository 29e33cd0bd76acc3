"""`/metrics` in the Prometheus text exposition format (version 0.0.4).

Label cardinality is bounded: `device` takes at most `max_devices` values (default 1000; the first by id; the rest
are counted in `edge_metrics_devices_omitted`), `model` at most 32 per device (the protocol's limit, enforced here for
the reported state and the telemetry alike; label values are cut to 128 characters), `quantile`
3 values, `le` 15 values (every 5th shared latency bound, i.e. two per decade, plus +Inf) and `state` 2. The model
version appears only as a label of `edge_model_info` (one series per device and model at a time).
"""

from __future__ import annotations

import math
import time
from typing import Any

from protocol import LATENCY_BOUNDS_MS, MAX_TELEMETRY_MODELS

# a coarser view of the shared buckets for the fleet histogram: cumulative counts at every 5th bound
EXPORTED_LE = list(range(0, len(LATENCY_BOUNDS_MS), 5))
DEFAULT_MAX_DEVICES = 1000
MAX_LABEL_CHARS = 128


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v)[:MAX_LABEL_CHARS])}"' for k, v in labels.items()) + "}"


def _served(state: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The models of a device's reported state that get an `edge_model_info` series: named, one per name, at most
    MAX_TELEMETRY_MODELS (a device reporting thousands cannot multiply the series)."""
    seen: dict[str, dict[str, Any]] = {}
    for m in state or []:
        name = m.get("name") if isinstance(m, dict) else None
        serving = (m.get("serving") or {}) if isinstance(m, dict) else {}
        if isinstance(name, str) and name not in seen and isinstance(serving, dict) and serving.get("version"):
            seen[name] = m
            if len(seen) >= MAX_TELEMETRY_MODELS:
                break
    return list(seen.values())


def _num(value: float | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Out:
    """Samples grouped by metric family (the format wants each family's lines together)."""

    def __init__(self) -> None:
        self.families: dict[str, list[str]] = {}
        self._current = ""

    def metric(self, name: str, kind: str, help_text: str) -> None:
        if name not in self.families:
            self.families[name] = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self._current = name

    def sample(self, name: str, value: float | None, **labels: str) -> None:
        family = name if name in self.families else self._current
        self.families[family].append(f"{name}{_labels(**labels) if labels else ''} {_num(value)}")

    @property
    def lines(self) -> list[str]:
        return [line for family in self.families.values() for line in family]


def render(
    devices: list[dict[str, Any]], ingest, *, max_devices: int = DEFAULT_MAX_DEVICES, now: float | None = None
) -> str:
    """devices: rows from the device registry (id, online, state); ingest: the TelemetryIngest."""
    now = now or time.time()
    out = _Out()
    online = sum(1 for d in devices if d["online"])
    out.metric("edge_fleet_devices", "gauge", "Registered devices by connection state.")
    out.sample("edge_fleet_devices", online, state="online")
    out.sample("edge_fleet_devices", len(devices) - online, state="offline")
    out.metric("edge_telemetry_messages_total", "counter", "Telemetry messages received, stored and rejected.")
    out.sample("edge_telemetry_messages_total", ingest.received, result="received")
    out.sample("edge_telemetry_messages_total", ingest.stored, result="stored")
    out.sample("edge_telemetry_messages_total", ingest.rejected, result="rejected")
    out.sample("edge_telemetry_messages_total", ingest.quarantined, result="quarantined")
    out.sample("edge_telemetry_messages_total", ingest.over_budget, result="over_budget")

    shown = sorted(devices, key=lambda d: d["id"])[:max_devices]
    shown_ids = {d["id"] for d in shown}
    out.metric("edge_metrics_devices_omitted", "gauge", "Devices left out of per-device series (max_devices).")
    out.sample("edge_metrics_devices_omitted", len(devices) - len(shown))

    out.metric("edge_device_up", "gauge", "1 when the device is connected to the broker.")
    for d in shown:
        out.sample("edge_device_up", 1 if d["online"] else 0, device=d["id"])
    for d in shown:
        for m in _served(d.get("state")):
            serving = m["serving"]
            out.metric("edge_model_info", "gauge", "The model version and backend serving on a device.")
            out.sample(
                "edge_model_info",
                1,
                device=d["id"],
                model=m["name"],
                version=serving["version"],
                backend=serving.get("backend", ""),
            )

    resources = [
        ("edge_device_cpu_percent", "cpu_percent", "CPU use of the device, all cores (percent)."),
        ("edge_device_load1", "load1", "One-minute load average."),
        ("edge_device_memory_percent", "mem_percent", "System memory in use (percent)."),
        ("edge_device_agent_rss_megabytes", "rss_mb", "Resident memory of the edge agent (MiB)."),
        ("edge_device_disk_free_megabytes", "disk_free_mb", "Free disk of the agent's data directory (MiB)."),
        ("edge_device_temperature_celsius", "temperature_c", "Hottest temperature sensor of the device."),
        ("edge_device_gpu_load_percent", "gpu_load_percent", "GPU load (Jetson)."),
        ("edge_device_power_watts", "gpu_power_w", "Board input power (Jetson)."),
    ]
    fleet_hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    fleet_sum = 0.0
    snapshot = ingest.snapshot()
    for device_id, ts, res, dropped, models in snapshot:
        for _, _, _, _, hist, total_ms, *_ in models:
            fleet_hist = [a + b for a, b in zip(fleet_hist, hist, strict=False)]
            fleet_sum += total_ms
        if device_id not in shown_ids:
            continue
        out.metric("edge_device_telemetry_age_seconds", "gauge", "Seconds since the device's newest telemetry window.")
        out.sample("edge_device_telemetry_age_seconds", round(max(0.0, now - ts), 3), device=device_id)
        out.metric("edge_device_telemetry_dropped", "gauge", "Samples the device's full disk queue discarded.")
        out.sample("edge_device_telemetry_dropped", dropped, device=device_id)
        for name, key, help_text in resources:
            if res.get(key) is not None:
                out.metric(name, "gauge", help_text)
                out.sample(name, res[key], device=device_id)
    for device_id, _ts, _res, _dropped, models in snapshot:
        if device_id not in shown_ids:
            continue
        for name, _version, requests, errors, _hist, _sum, p50, p95, p99, rps, score, drifting, psi in models:
            out.metric("edge_model_requests_total", "counter", "Inferences answered, per device and model.")
            out.sample("edge_model_requests_total", requests, device=device_id, model=name)
            out.metric("edge_model_errors_total", "counter", "Inferences that failed, per device and model.")
            out.sample("edge_model_errors_total", errors, device=device_id, model=name)
            out.metric("edge_model_requests_per_second", "gauge", "Throughput in the newest window.")
            out.sample("edge_model_requests_per_second", round(rps, 3), device=device_id, model=name)
            out.metric("edge_model_latency_ms", "gauge", "Latency quantiles of the newest window (ms).")
            for q, value in (("0.5", p50), ("0.95", p95), ("0.99", p99)):
                out.sample("edge_model_latency_ms", value, device=device_id, model=name, quantile=q)
            out.metric("edge_model_drift_score", "gauge", "Largest output-mean shift from the baseline, in std units.")
            out.sample("edge_model_drift_score", score, device=device_id, model=name)
            out.metric(
                "edge_model_drift",
                "gauge",
                "1 when an output mean, the class mix, an output element or an input moved.",
            )
            out.sample("edge_model_drift", 1 if drifting else 0, device=device_id, model=name)
            out.metric(
                "edge_model_drift_psi",
                "gauge",
                "Largest move of the class mix, outputs or inputs from the baseline (PSI).",
            )
            out.sample("edge_model_drift_psi", round(psi, 4), device=device_id, model=name)

    out.metric("edge_fleet_latency_ms", "histogram", "Inference latency across the fleet (ms), all models.")
    cumulative = 0
    done = 0
    for index in EXPORTED_LE:
        while done <= index:
            cumulative += fleet_hist[done]
            done += 1
        out.sample("edge_fleet_latency_ms_bucket", cumulative, le=repr(LATENCY_BOUNDS_MS[index]))
    total = sum(fleet_hist)
    out.sample("edge_fleet_latency_ms_bucket", total, le="+Inf")
    out.sample("edge_fleet_latency_ms_sum", round(fleet_sum, 3))
    out.sample("edge_fleet_latency_ms_count", total)
    return "\n".join(out.lines) + "\n"
