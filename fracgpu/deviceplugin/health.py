"""The devices the plugin advertises, kept current from the backend and the health policy.

``DeviceState`` is the merged view (backend facts + ``fracgpu.core.health`` verdicts) with a
version number that ListAndWatch streams wait on. ``HealthMonitor`` is the loop that feeds it:
backend events wake it at once (so a health change reaches ListAndWatch well within a second),
and every ``HealthConfig.poll_interval`` it samples each GPU for the policy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from fracgpu.api.v1beta1.inventory import GpuInfo
from fracgpu.core.health import GpuSample, HealthTracker
from fracgpu.core.healthconfig import HealthConfig
from fracgpu.deviceplugin.backends.base import BackendError, EventKind, GpuBackend

log = logging.getLogger(__name__)


class DeviceState:
    def __init__(self, backend: GpuBackend, tracker: HealthTracker | None = None) -> None:
        self.backend = backend
        self.tracker = tracker
        self._cond = threading.Condition()
        self._gpus: tuple[GpuInfo, ...] = ()
        self.node_ok = True
        self.node_reason = ""
        self.version = 0
        self.refresh()

    def gpus(self) -> tuple[GpuInfo, ...]:
        with self._cond:
            return self._gpus

    def refresh(self) -> bool:
        """Re-read the backend; True (and a new version) when anything changed."""
        try:
            raw = self.backend.inventory()
            node_ok, node_reason = True, ""
        except BackendError as e:
            raw, node_ok, node_reason = (), False, str(e)
        merged = []
        for g in raw:
            verdict = self.tracker.state(g.uuid) if self.tracker is not None else None
            sick = g.healthy and verdict is not None and not verdict.healthy
            merged.append(replace(g, healthy=False, reason=verdict.reason) if sick and verdict else g)
        with self._cond:
            if not node_ok and self._gpus:
                # NVML unreachable: keep the GPUs we knew, all unhealthy
                merged = [replace(g, healthy=False, reason=node_reason) for g in self._gpus]
            new = tuple(merged)
            if new == self._gpus and (node_ok, node_reason) == (self.node_ok, self.node_reason):
                return False
            self._gpus, self.node_ok, self.node_reason = new, node_ok, node_reason
            self.version += 1
            self._cond.notify_all()
            return True

    def wait_change(self, seen: int, timeout: float) -> int:
        """Block until the version differs from `seen` or `timeout` passes; returns the version."""
        with self._cond:
            if self.version == seen:
                self._cond.wait(timeout)
            return self.version

    def poke(self) -> None:
        """Wake the waiters (e.g. at shutdown) without a change."""
        with self._cond:
            self._cond.notify_all()


class HealthMonitor:
    """Backend events and periodic samples -> DeviceState. Runs in its own thread."""

    def __init__(self, state: DeviceState, cfg: HealthConfig, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None) -> None:
        self.state = state
        self.cfg = cfg
        self.clock = clock
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._xids: dict[str, list[int]] = {}
        self._next_poll = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fracgpu-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.state.backend.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(wait=min(0.25, self.cfg.poll_interval))
            except Exception:
                log.exception("health loop failed; retrying")
                self._stop.wait(1.0)

    def step(self, wait: float = 0.0) -> bool:
        """One turn: collect events (waiting up to `wait`), sample when due; True when the devices changed."""
        refresh = False
        for ev in self.state.backend.wait_events(wait):
            if ev.kind is EventKind.XID and ev.uuid:
                self._xids.setdefault(ev.uuid, []).append(ev.xid)
            else:
                refresh = True
                if ev.kind is EventKind.GONE and self.state.tracker is not None:
                    self.state.tracker.forget(ev.uuid)
        now = self.clock()
        tracker = self.state.tracker
        polled = now >= self._next_poll
        if polled:
            self._next_poll = now + self.cfg.poll_interval
        if tracker is not None and (self._xids or polled):
            for g in self.state.gpus():
                xids = tuple(self._xids.pop(g.uuid, ()))
                if not polled and not xids:
                    continue
                try:
                    sample = self.state.backend.sample(g.uuid) if polled else GpuSample()
                except (KeyError, BackendError) as e:
                    sample = GpuSample(error=str(e))
                if xids:
                    sample = replace(sample, xids=xids)
                change = tracker.observe(g.uuid, sample, now)
                if change is not None:
                    log.info("gpu health changed uuid=%s healthy=%s reason=%r", g.uuid, change.state.healthy,
                             change.state.reason)
                    refresh = True
            self._xids.clear()
        changed = self.state.refresh() if refresh or polled else False
        if changed and self.on_change is not None:
            self.on_change()
        return changed
