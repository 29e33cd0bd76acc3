"""Follows the desired state: deploys each new version beside the serving one, and serves from disk at start.

One worker reconciles the newest desired state; a version is swapped in only when it is verified, loaded, warm and
checked (agent.deploy.preswap). The deployer is the status board's one writer: each step of a deployment (downloads,
loader, variants, preswap, rollback) returns its result here and the deployer shows it; what changes a serving
version outside a deployment (a rollback in the health window, a re-selection, a run-time failover) is told to it
(`watch`, `reselected`, `failed_over`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from functools import partial
from typing import Any

from agent.config import AgentConfig
from agent.deploy.crashguard import CrashGuard
from agent.deploy.downloads import Artifact, Downloads, Stage
from agent.deploy.loader import Loader, failover_status
from agent.deploy.oomguard import OomRestart
from agent.deploy.preswap import ShadowPlan, Unhealthy, check_before_swap
from agent.deploy.reselect import Reselected
from agent.deploy.rollback import CHECK_INTERVAL_S, Rollback, RolledBack
from agent.deploy.variants import Chosen, choose
from agent.fetch.fetcher import FetchCancelled
from agent.fetch.store import Installed, ModelRecord, ModelStore, Refusal
from agent.serving.eviction import MemoryRefused
from agent.serving.table import LoadedModel, ModelTable
from agent.status_board import StatusBoard
from protocol import Desired, DesiredModel, Failover, Problem, Selection, Shadow
from protocol.errors import EdgeError, error_code
from protocol.signing import Verifier
from targets.base import BackendError
from targets.inputs import SampleError

log = logging.getLogger(__name__)

# The codes a failed deployment reports that are not the exception's own: a backend that cannot load the version.
REPORTED_AS: dict[type[Exception], str] = {MemoryRefused: "out_of_memory", BackendError: "load_failed"}
# Failures that say nothing about the version (the network, the disk, memory others use): the next desired state
# tries it again.
TRANSIENT = ("fetch_failed", "hash_mismatch", "deploy_failed", "out_of_memory")


def failure_code(exc: Exception) -> str:
    """The status' reason code for a failed deployment: REPORTED_AS, else an EdgeError's own code."""
    for kind, code in REPORTED_AS.items():
        if isinstance(exc, kind):
            return code
    return error_code(exc, "deploy_failed")


class Deployer:
    """The deploy worker: `submit` a desired state (from the MQTT thread); the worker reconciles the newest one."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        table: ModelTable,
        store: ModelStore,
        board: StatusBoard,
        loader: Loader,
        downloads: Downloads,
        rollback: Rollback,
        verifier: Verifier | None,
        guard: CrashGuard,
    ) -> None:
        self.config = config
        self.guard = guard
        self.stale: set[str] = set()  # models restored on a choice made on other hardware or runtimes
        self.table = table
        self.store = store
        self.board = board
        self.loader = loader
        self.downloads = downloads
        self.rollback = rollback
        self.verifier = verifier
        self.cancel = downloads.cancel
        self._desired: queue.Queue[Desired | None] = queue.Queue()
        self._lock = threading.Lock()
        self._reconciling: dict | None = None  # what the desired state being reconciled now asks for
        self.thread = threading.Thread(target=self._loop, name="deploy", daemon=True)

    # -- the worker --------------------------------------------------------------------------------------------------

    def submit(self, desired: Desired) -> None:
        """A newer desired state supersedes the deployment in progress; the same one again (the broker delivers the
        retained state after every reconnect) lets it carry on instead of starting it over."""
        with self._lock:
            if self._reconciling is not None and self._desired.empty() and _targets(desired) == self._reconciling:
                log.info("desired state generation %d again (a reconnect): the deployment in progress carries on",
                         desired.generation)  # fmt: skip
                return
            self.cancel.set()
            self._desired.put(desired)

    def stop(self) -> None:
        self.cancel.set()
        self._desired.put(None)

    def _loop(self) -> None:
        while (desired := self._next()) is not None:
            with self._lock:
                self.cancel.clear()
                self._reconciling = _targets(desired)
            try:
                self.reconcile(desired)
            except Exception:
                log.exception("reconcile failed")
            finally:
                with self._lock:
                    self._reconciling = None

    def _next(self) -> Desired | None:
        """The newest desired state queued (the older ones no longer matter); None to stop."""
        desired = self._desired.get()
        while desired is not None and not self._desired.empty():
            desired = self._desired.get()
        return desired

    # -- reconciling -------------------------------------------------------------------------------------------------

    def reconcile(self, desired: Desired) -> None:
        self.board.generation = desired.generation
        wanted = {m.name for m in desired.models}
        if self.loader.memory is not None:  # `edgectl push --pin`: never unloaded to make room
            self.loader.memory.pin({m.name for m in desired.models if m.pinned})
        for name in self.board.names():
            if name not in wanted:
                self._remove(name)
        for target in desired.models:
            if self.cancel.is_set():
                return
            self.loader.recorder.declare(target.name, target.version, target.task)  # how its outputs are judged
            self._follow(target)
        self.store.collect_garbage(self.config.keep_versions, desired.artifacts())
        self.board.publish()

    def _remove(self, name: str) -> None:
        self.table.remove(name)
        if self.loader.taps is not None:
            self.loader.taps.drop(name)  # its kept request inputs go with it
        self.rollback.forget(name)
        self.store.forget(name)
        self.board.remove(name)
        log.info("model %s removed by the controller", name)

    def _follow(self, target: DesiredModel) -> None:
        loaded = self.table.current(target.name)
        if loaded and loaded.sha256 == target.sha256:
            self.board.update(target.name, state="serving", reason=None)
            return
        refused = self.store.rejection(target.name, target.sha256)
        if refused and refused.attempt >= target.attempt:
            entry = self.board.get(target.name)
            if entry and entry.sha256 == target.sha256 and entry.state == "failed":
                return  # reported already, with its shadow figures
            problem = Problem(code=refused.code, message=refused.reason)
            backend = self.board.serving_backend(target.name)
            self.board.open(
                target.name, target.version, target.sha256, "failed",
                reason=problem, backend=backend, attempt=refused.attempt,
            )  # fmt: skip
            self.board.publish()
            return
        self._deploy(target)

    def _deploy(self, target: DesiredModel) -> None:
        self.board.open(target.name, target.version, target.sha256, "pending", attempt=target.attempt)
        try:
            chosen, shadow = self._prepare(target)
        except FetchCancelled:
            self.guard.end(target.name)
            log.info("deployment of %s %s superseded", target.name, target.version)
            return
        except SampleError as exc:
            self._fail(target, SampleError(f"the samples given with the model do not fit it: {exc}"))
            return
        except (EdgeError, OSError, KeyError) as exc:
            self._fail(target, exc)
            return
        self._swap_in(target, replace(chosen.model, attempt=target.attempt), chosen.selection, chosen.artifact, shadow)

    def _prepare(self, target: DesiredModel) -> tuple[Chosen, Shadow | None]:
        """Verify the signature, fetch, load the original and its variants, choose, and check the winner."""
        started = time.perf_counter()
        if self.verifier is not None:
            self.verifier.verify(target.manifest(), target.signature)
        fetched = self.downloads.fetch_all(target, partial(self._show_download, target.name))
        fetched_at = time.perf_counter()
        self.board.update(target.name, state="loading")
        self.guard.begin(target.name, target.sha256, target.version, target.attempt, "loading")
        load = partial(self.loader.load_target, target, fetched.samples)
        chosen = choose(target, fetched.artifacts, fetched.left_out, load)
        loaded_at = time.perf_counter()
        serving = self.table.current(target.name)
        if serving is not None:
            self.board.update(target.name, state="checking")
        shadow = check_before_swap(chosen.model, serving, self.shadow_plan(), chosen.model.tap, self.cancel)
        log.info(
            "%s %s ready in %.3f s: fetch and verify %.3f s, trial and load %.3f s, pre-swap check %.3f s",
            target.name, target.version, time.perf_counter() - started, fetched_at - started,
            loaded_at - fetched_at, time.perf_counter() - loaded_at,
        )  # fmt: skip
        if self.cancel.is_set():
            raise FetchCancelled("superseded during the shadow check")
        return chosen, shadow

    def _show_download(self, name: str, stage: Stage) -> None:
        self.board.update(name, state=stage.state, progress=stage.progress)

    def shadow_plan(self) -> ShadowPlan:
        cfg = self.config
        return ShadowPlan(cfg.shadow_window_s, cfg.shadow_pairs, cfg.shadow_share, cfg.rollback_latency_pct)

    def _swap_in(
        self,
        target: DesiredModel,
        model: LoadedModel,
        selection: Selection,
        artifact: Artifact,
        shadow: Shadow | None,
    ) -> None:
        installed = Installed(
            target.version,
            artifact.sha256,
            artifact.format,
            model.backend.label,
            artifact.variant,
            target.sha256 if artifact.variant else None,
            target.samples.sha256 if target.samples else None,
            dict(target.input_shapes) or None,
        )
        self.rollback.swap_in(model, installed)
        self.board.update_serving(
            target.name,
            state="serving",
            backend=model.backend.label,
            reason=None,
            selection=selection,
            failover=failover_status(model.backend),
            shadow=shadow,
        )
        log.info("now serving %s %s on %s (%s)", target.name, target.version, model.backend.label, selection.reason)

    def _fail(self, target: DesiredModel, exc: Exception) -> None:
        """Report the failure; one that is the version's own is not tried again at this attempt."""
        log.error("deployment of %s %s failed: %s", target.name, target.version, exc)
        self.guard.end(target.name)
        code = failure_code(exc)
        if code not in TRANSIENT and not isinstance(exc, OSError):
            self.store.reject(target.name, target.sha256, Refusal(str(exc), code, target.attempt))
        shadow = exc.report if isinstance(exc, Unhealthy) else None
        self.board.update(target.name, state="failed", reason=Problem(code=code, message=str(exc)), shadow=shadow)

    def report_refused(self, desired: Desired, exc: EdgeError, generation: int) -> None:
        """Show each model of a desired state refused for its signature as failed (what serves stays), so the
        operator sees why nothing changes; a state older than the one followed (a replay) shows nothing."""
        if desired.generation < generation:
            return
        problem = Problem(code=exc.code, message=f"desired state refused: {exc}")
        for target in desired.models:
            entry = self.board.get(target.name)
            if entry is not None and entry.sha256 == target.sha256 and entry.reason == problem:
                continue
            backend = self.board.serving_backend(target.name)
            self.board.open(target.name, target.version, target.sha256, "failed", reason=problem, backend=backend)
        self.board.publish()

    # -- a serving version changed outside a deployment: told here, the board's one writer ----------------------------

    def watch(self, stop: threading.Event) -> None:
        """The health thread, until `stop`: rolls back each fresh version its health window found unhealthy."""
        while not stop.wait(CHECK_INTERVAL_S):
            for rolled in self.rollback.check_all():
                self.rolled_back(rolled)

    def rolled_back(self, rolled: RolledBack) -> None:
        self.board.update_serving(rolled.name, state="failed", reason=rolled.problem, backend=rolled.backend)

    def reselected(self, decided: Reselected) -> None:
        """A re-selection's decision in the status' selection (agent.deploy.reselect); a new choice that serves now
        brings its own selection, backend and failover."""
        if decided.serving is not None:
            model = decided.serving.model
            selection = decided.serving.selection.model_copy(update={decided.field: decided.outcome})
            failover = failover_status(model.backend)
            self.board.update_serving(decided.name, backend=model.backend.label, selection=selection, failover=failover)
            return
        entry = self.board.get(decided.name)
        if entry is not None and entry.selection is not None:
            noted = entry.selection.model_copy(update={decided.field: decided.outcome})
            self.board.update(decided.name, selection=noted)

    def failed_over(self, name: str, status: Failover) -> None:
        """A run-time failover of a serving model (heard from its backend, on the request's thread)."""
        self.board.update(name, failover=status)

    # -- from disk ---------------------------------------------------------------------------------------------------

    def restore(self, after_oom: OomRestart | None = None) -> None:
        """Serve each model's last good version from the store; fall back to older verified versions. After an OOM
        kill (agent.deploy.oomguard): most recently used first, one at a time, only what fits the budget now."""
        names = list(self.store.records)
        for name in after_oom.order(names) if after_oom else names:
            record = self.store.records[name]
            if after_oom is not None:
                memory = self.loader.memory
                free = memory.budget.free_mb() - memory.headroom_mb if memory is not None else float("inf")
                if not after_oom.fits(name, free):
                    self._left_out(name, record, after_oom)
                    continue
            for candidate in ([record.serving] if record.serving else []) + record.history:
                if self._restore(name, record, candidate):
                    if after_oom is not None:
                        after_oom.restored.append(name)
                    break
        if after_oom is not None:
            for name in after_oom.left_out:
                if name in self.store.records and name not in after_oom.skip:  # its version before serves
                    self._left_out(name, self.store.records[name], after_oom)
            log.warning("%s", after_oom.summary())

    def _left_out(self, name: str, record: ModelRecord, after_oom: OomRestart) -> None:
        """The status of a model an OOM-aware restore left out: failed, with the one-line reason (what serves, if
        anything, stays shown as serving)."""
        installed = record.serving or (record.history[0] if record.history else None)
        default = (installed.version, installed.identity) if installed is not None else ("?", "")
        version, sha = after_oom.loading.get(name, default)
        problem = Problem(code="oom_killed", message=after_oom.left_out[name])
        self.board.open(name, version, sha, "failed", reason=problem)

    def _restore(self, name: str, record: ModelRecord, candidate: Installed) -> bool:
        if not self.store.verify(candidate.sha256):
            log.error("stored %s %s fails its sha256 check; not serving it", name, candidate.version)
            return False
        if self.store.rejection(name, candidate.identity):
            return False  # it crashed the agent (agent.deploy.crashguard)
        on_trial = self.guard.mark(name)
        self.guard.begin(name, candidate.identity, candidate.version, 0, "restoring")
        try:
            loaded = self.loader.load(
                name, candidate.version, candidate.sha256, candidate.format,
                samples=self.downloads.stored_samples(candidate.samples), hints=candidate.input_shapes,
                defer_trial=True,
            )  # fmt: skip
        except (BackendError, SampleError, OSError) as exc:
            self.guard.end(name)
            log.error("stored %s %s does not load: %s", name, candidate.version, exc)
            return False
        self.guard.resume(name, on_trial if on_trial and on_trial.sha256 == candidate.identity else None)
        if loaded.stale:
            self.stale.add(name)  # served now on the choice made before; agent.deploy.reselect runs the trial anew
        model = replace(
            loaded.model, sha256=candidate.identity, artifact_sha256=candidate.sha256, variant=candidate.variant
        )
        self.table.swap(model)
        if candidate is not record.serving:
            self.store.mark_serving(name, candidate)
        self.board.open(
            name, candidate.version, candidate.identity, "serving",
            progress=1.0, backend=model.backend.label, selection=loaded.selection,
            failover=failover_status(model.backend),
        )  # fmt: skip
        log.info("serving %s %s from disk on %s", name, candidate.version, model.backend.label)
        return True


# where and when the bytes come from, not what is deployed: a republished state may renew them
_TRANSPORT: dict[str, Any] = {"url": True, "fetch_spread_s": True, "variants": {"__all__": {"url"}}, "samples": {"url"}}


def _targets(desired: Desired) -> dict:
    """What a desired state asks for: its generation and models, without its time, expiry, signature or the
    models' download URLs (a controller republishing after a broker restart renews those)."""
    exclude: dict[str, Any] = {"models": {"__all__": _TRANSPORT}}
    return desired.model_dump(include={"generation", "models"}, exclude=exclude)
