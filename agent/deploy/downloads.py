"""Brings a desired version's files into the store, verified: the model, its signed variants, its samples. Where
each download stands goes to the caller (the deployer shows it in the device status); what was fetched is returned."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agent.fetch.fetcher import ArtifactFetcher, FetchError, Progress
from agent.fetch.store import ModelStore, VerifyError
from protocol import DesiredModel, Transfer
from protocol.signing import VARIANT_CONTEXT, SignatureError, Verifier
from targets.inputs import Inputs, unpack_samples

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25


@dataclass
class Artifact:
    """One file that can serve a desired model: the original (variant None) or an optimized variant."""

    variant: str | None
    sha256: str
    size: int
    format: str
    offer: Transfer | None = None  # a compressed encoding the controller holds

    @property
    def label(self) -> str:
        return self.variant or "original"


@dataclass(frozen=True)
class Stage:
    """Where a download stands: "downloading" with the share of its bytes in, or "verifying" (progress 1.0)."""

    state: Literal["downloading", "verifying"]
    progress: float


Show = Callable[[Stage], None]


@dataclass(frozen=True)
class Fetched:
    """A desired version's files in the store: the original first, then each variant that could be had; the variants
    left out, with why; and the samples given with it (None: none given)."""

    artifacts: list[Artifact]
    left_out: dict[str, str]
    samples: list[Inputs] | None


class Downloads:
    """Fetches a desired version's files one at a time; `cancel` (a newer desired state, or stop) aborts one."""

    def __init__(
        self,
        fetcher: ArtifactFetcher,
        store: ModelStore,
        verifier: Verifier | None,
        cancel: threading.Event,
    ) -> None:
        self.fetcher = fetcher
        self.store = store
        self.verifier = verifier
        self.cancel = cancel
        self._last_progress = 0.0

    def fetch_all(self, target: DesiredModel, show: Show) -> Fetched:
        """The original (raises when it cannot be had), then each signed variant (one that cannot be had is left
        out), then the samples (raise like the original); `show` hears where each download stands."""
        original = Artifact(None, target.sha256, target.size, target.format, target.transfer)
        self.fetch(original, show, target.url, target.fetch_spread_s)  # the one wait spreads the fleet's start
        artifacts, left_out = [original], {}
        for ref in target.variants:
            variant = Artifact(ref.variant, ref.sha256, ref.size, ref.format, ref.transfer)
            try:
                if self.verifier is not None:
                    self.verifier.verify(target.variant_manifest(ref), ref.signature, VARIANT_CONTEXT)
                self.fetch(variant, show, ref.url)
            except (FetchError, VerifyError, SignatureError) as exc:
                log.warning("variant %s of %s %s left out: %s", ref.variant, target.name, target.version, exc)
                left_out[ref.variant] = str(exc)
                continue
            artifacts.append(variant)
        return Fetched(artifacts, left_out, self.fetch_samples(target, show))

    def fetch_samples(self, target: DesiredModel, show: Show) -> list[Inputs] | None:
        """The representative inputs given with the version, fetched and verified like a model."""
        if target.samples is None:
            return None
        samples = Artifact("samples", target.samples.sha256, target.samples.size, "npz")
        self.fetch(samples, show, target.samples.url)
        return self.stored_samples(target.samples.sha256)

    def stored_samples(self, sha256: str | None) -> list[Inputs] | None:
        path = self.store.path(sha256) if sha256 else None
        return unpack_samples(path) if path is not None and path.exists() else None

    def fetch(self, artifact: Artifact, show: Show, url: str | None = None, spread_s: float = 0.0) -> None:
        """Download the artifact unless the store has it (then check it again); VerifyError for a bad stored copy.
        `url`: over HTTP from there first (after a random wait of up to `spread_s`)."""
        fetched = not self.store.has(artifact.sha256)
        if fetched:  # the fetcher hashes while it writes and commits only a matching file
            show(Stage("downloading", 0.0))
            progress = self._progress(show)
            self.fetcher.fetch(artifact.sha256, artifact.size, progress, self.cancel, artifact.offer, url, spread_s)
        show(Stage("verifying", 1.0))
        if not fetched and not self.store.verify(artifact.sha256):
            raise VerifyError(f"stored {artifact.label} artifact does not match its sha256")

    def _progress(self, show: Show) -> Progress:
        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - self._last_progress < PROGRESS_INTERVAL_S:
                return
            self._last_progress = now
            show(Stage("downloading", round(done / total, 4) if total else 1.0))

        return report
