"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Shared by `fracgpu controller` (Lease fracgpu-controller) and `fracgpu extender` (Lease
fracgpu-extender); ``KubeLeaseStore`` is the store over the API server, ``SystemClock`` the real clock.

Two replicas never act twice: a replica acts only while ``is_leader(now)``, which holds until
``renew_deadline`` after the start of its last successful renewal; another replica takes over only
after it has seen the Lease unchanged for ``lease_duration`` (> renew_deadline) on its own clock.
Writes use the Lease's resourceVersion (optimistic concurrency): of two racing replicas one gets a
409 Conflict and stays a follower. Clock skew between replicas does not matter (durations are
measured on each replica's own monotonic clock); only the clock *rate* is trusted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fracgpu.api.rfc3339 import format_micro_time
from fracgpu.kube import errors, objects
from fracgpu.kube.resources import LEASES
from fracgpu.kube.writer import KubeWriter


class LeaseConflict(Exception):
    """The Lease changed under us (409) or was created by another replica first."""


class LeaseStore(Protocol):
    """Get / create / replace one Lease; the adapter maps 409 (and 'already exists') to LeaseConflict."""

    def get(self) -> Mapping[str, Any] | None: ...

    def create(self, body: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def replace(self, body: Mapping[str, Any]) -> Mapping[str, Any]: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> dt.datetime: ...


class SystemClock:
    """The process' clocks: monotonic for durations, UTC wall time for the Lease's timestamps."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


class LeaderElector:
    """Call ``tick()`` every ``retry_period``; act only while ``is_leader()``."""

    def __init__(
        self, store: LeaseStore, namespace: str, name: str, identity: str, timing: LeaseTiming, clock: Clock
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self._renewed_at: float | None = None  # our clock, start of the last successful write
        self._observed: tuple[Any, ...] | None = None  # the Lease spec as last seen
        self._observed_at = 0.0  # our clock, when it last changed
        self.holder = ""  # the holder as last seen

    def is_leader(self, now: float | None = None) -> bool:
        t = self.clock.monotonic() if now is None else now
        return self._renewed_at is not None and t < self._renewed_at + self.timing.renew_deadline

    def leading_for(self, now: float | None = None) -> float:
        """Seconds this replica still leads without another renewal (0 when it does not lead)."""
        if self._renewed_at is None:
            return 0.0
        t = self.clock.monotonic() if now is None else now
        return max(0.0, self._renewed_at + self.timing.renew_deadline - t)

    def tick(self) -> bool:
        """Try to acquire or renew the Lease once; returns whether this replica leads now.

        API errors other than a conflict leave the state as it was: a leader keeps leading until its
        renew deadline passes, then steps down by itself.
        """
        now = self.clock.monotonic()
        lease = self.store.get()
        if lease is None:
            return self._write(now, None, transitions=0, acquire=True)
        spec_raw = lease.get("spec")
        spec: Mapping[str, Any] = spec_raw if isinstance(spec_raw, Mapping) else {}
        holder = str(spec.get("holderIdentity") or "")
        seen = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        self.holder = holder
        duration = _seconds(spec.get("leaseDurationSeconds"), self.timing.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            self._renewed_at = None
            return False
        transitions = _int(spec.get("leaseTransitions"))
        ours = holder == self.identity
        return self._write(now, lease, transitions=transitions if ours else transitions + 1, acquire=not ours)

    def release(self) -> None:
        """Give the Lease up at shutdown so that another replica takes over without waiting."""
        if not self.is_leader():
            return
        lease = self.store.get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            self._renewed_at = None
            return
        body = _with_spec(lease, {**lease.get("spec", {}), "holderIdentity": None, "leaseDurationSeconds": 1})
        self._renewed_at = None
        with contextlib.suppress(LeaseConflict):
            self.store.replace(body)

    def _write(self, now: float, lease: Mapping[str, Any] | None, *, transitions: int, acquire: bool) -> bool:
        wall = format_micro_time(self.clock.wall())
        old_spec = (lease or {}).get("spec") or {}
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timing.lease_duration)),
            "acquireTime": wall if acquire else old_spec.get("acquireTime", wall),
            "renewTime": wall,
            "leaseTransitions": transitions,
        }
        new = {"metadata": {"name": self.name, "namespace": self.namespace}}
        body = _with_spec(lease if lease is not None else new, spec)
        try:
            written = self.store.create(body) if lease is None else self.store.replace(body)
        except LeaseConflict:
            self._renewed_at = None
            return False
        wspec = written.get("spec") or {}
        self._observed = (
            self.identity,
            wspec.get("renewTime", wall),
            wspec.get("leaseDurationSeconds", spec["leaseDurationSeconds"]),
            wspec.get("leaseTransitions", transitions),
        )
        self._observed_at = now
        self._renewed_at = now
        self.holder = self.identity
        return True


def _with_spec(lease: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(objects.meta(lease))
    # keep resourceVersion: the replace is conditional on it
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": dict(spec)}


def _seconds(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else default


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class KubeLeaseStore:
    """``LeaseStore`` for one Lease over ``KubeWriter``: conditional writes, 409 -> ``LeaseConflict``."""

    def __init__(self, writer: KubeWriter, namespace: str, name: str) -> None:
        self.writer = writer
        self.namespace = namespace
        self.name = name

    def get(self) -> Mapping[str, Any] | None:
        try:
            return self.writer.get_lease(self.namespace, self.name)
        except errors.NotFound:
            return None

    def create(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self.writer.create_object(LEASES, body, namespace=self.namespace)
        except errors.Conflict as e:  # AlreadyExists is a Conflict
            raise LeaseConflict(str(e)) from e

    def replace(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self.writer.replace_object(LEASES, body, namespace=self.namespace)
        except errors.Conflict as e:
            raise LeaseConflict(str(e)) from e
