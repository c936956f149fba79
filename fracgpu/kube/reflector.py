"""Reflector: list+watch one resource into a callback, as plain JSON dicts, in a daemon thread.

The loop, as client-go's reflector:

1. list (paginated); diff against what was known: ADDED / MODIFIED (resourceVersion changed) /
   DELETED (vanished) events; after the first full list ``synced`` becomes true;
2. watch from the list's resourceVersion with ``allowWatchBookmarks``; every event (bookmarks
   included) advances the resourceVersion; a watch that ends (server ``timeoutSeconds``) is
   reopened at once from the last resourceVersion;
3. 410 Gone (an ERROR event with a Status 410, or an HTTP 410) -> relist;
4. a broken stream or a failed request -> back off (exponential, capped; injectable sleep)
   and resume from the last resourceVersion (relist if the list itself failed).

The handler runs on the reflector's thread, one event at a time, in order; it must be quick
and thread-safe (asyncio users hand over with ``loop.call_soon_threadsafe``). An exception in
the handler is logged and does not stop the reflector.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Final, Literal

from fracgpu.kube import errors, objects, pager
from fracgpu.kube.client import Transport, WatchStream
from fracgpu.kube.objects import Obj
from fracgpu.kube.resources import Resource
from fracgpu.kube.retry import Backoff

__all__ = ["ADDED", "DELETED", "MODIFIED", "EventType", "Reflector", "WatchEvent"]

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]
ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``object`` is the new state (for DELETED: the last known state)."""

    type: EventType
    object: Obj

    @property
    def key(self) -> tuple[str, str]:
        return objects.key(self.object)


_BACKOFF: Final = Backoff()


class _Expired(Exception):
    """The watch's resourceVersion is too old: relist."""


class Reflector:
    """List+watch ``resource`` (optionally one namespace / selectors) and report every change."""

    def __init__(self, transport: Transport, resource: Resource, handler: Callable[[WatchEvent], None], *,
                 namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None, watch_timeout_s: int = 300, page_size: int = pager.PAGE_SIZE,
                 backoff: Backoff = _BACKOFF, sleep: Callable[[float], None] | None = None,
                 on_synced: Callable[[], None] | None = None, name: str | None = None,
                 transform: Callable[[Obj], Obj] | None = None) -> None:
        if namespace and not resource.namespaced:
            raise ValueError(f"{resource.plural} is cluster-scoped; got namespace {namespace!r}")
        self.transport = transport
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout_s = watch_timeout_s
        self.page_size = page_size
        self.backoff = backoff
        self.on_synced = on_synced
        # applied to every listed or watched object before it is kept and handed over (client-go's
        # SetTransform): a cache of many objects keeps only the fields it needs. It must keep
        # metadata.name, .namespace and .resourceVersion.
        self.transform = transform
        self.name = name or f"reflector-{resource.plural}" + (f"-{namespace}" if namespace else "")
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._sleep = sleep if sleep is not None else self._interruptible_sleep
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], Obj] = {}
        self._resource_version = ""
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self.lists = 0  # full lists delivered (first sync + relists), counted after on_synced

    # -- public -----------------------------------------------------------------------------

    def start(self) -> Reflector:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop promptly: the open watch is cut and a backoff sleep is woken; joins the thread."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def synced(self) -> bool:
        """True once the first full list has been delivered."""
        return self._synced.is_set()

    def wait_synced(self, timeout_s: float | None = None) -> bool:
        return self._synced.wait(timeout_s)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return self._resource_version

    def items(self) -> list[Obj]:
        """A copy of every object the reflector knows now."""
        with self._lock:
            return [copy.deepcopy(o) for o in self._known.values()]

    def get(self, name: str, namespace: str = "") -> Obj | None:
        with self._lock:
            obj = self._known.get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """The loop; ``start()`` runs it in a daemon thread. Returns after ``stop()``."""
        need_list = True
        attempt = 0
        while not self._stop.is_set():
            try:
                if need_list:
                    self._relist()
                    need_list = False
                    attempt = 0
                if self._watch_once() > 0:
                    attempt = 0
                elif not self._stop.is_set():
                    # A watch that ends without a single event (not even the bookmark a real server
                    # sends before its timeout) is a server closing on us: do not spin.
                    delay = self.backoff.delay(attempt)
                    attempt += 1
                    log.info("empty watch, backing off reflector=%s delay_s=%.3f", self.name, delay)
                    self._sleep(delay)
            except _Expired:
                log.info("watch expired, relisting reflector=%s resource_version=%s", self.name,
                         self.resource_version)
                need_list = True
            except errors.KubeAPIError as exc:
                if isinstance(exc, errors.Expired) and not need_list:
                    need_list = True  # an HTTP 410 on the watch request: relist at once
                    continue
                if self._stop.is_set():
                    break
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.info("reflector retrying reflector=%s relist=%s error=%r delay_s=%.3f", self.name,
                         need_list, exc, delay)
                self._sleep(delay)
            except Exception:  # a bug must not silently end the reflector: log it and go on, slowly
                if self._stop.is_set():
                    break
                delay = self.backoff.delay(attempt)
                attempt += 1
                need_list = True
                log.exception("reflector failed unexpectedly reflector=%s delay_s=%.3f", self.name, delay)
                self._sleep(delay)
        log.debug("reflector stopped reflector=%s", self.name)

    def _interruptible_sleep(self, delay_s: float) -> None:
        self._stop.wait(delay_s)

    def _relist(self) -> None:
        listed: dict[tuple[str, str], Obj] = {}
        list_rv = ""
        for page in pager.pages(self.transport, self.resource, namespace=self.namespace,
                                label_selector=self.label_selector, field_selector=self.field_selector,
                                page_size=self.page_size):
            list_rv = list_rv or page.resource_version
            for item in page.items:
                kept = self.transform(item) if self.transform is not None else item
                listed[objects.key(kept)] = kept
        events: list[WatchEvent] = []
        with self._lock:
            for k, obj in listed.items():
                old = self._known.get(k)
                if old is None:
                    events.append(WatchEvent(ADDED, obj))
                elif objects.resource_version(old) != objects.resource_version(obj):
                    events.append(WatchEvent(MODIFIED, obj))
            events.extend(WatchEvent(DELETED, old) for k, old in self._known.items() if k not in listed)
            self._known = listed
            self._resource_version = list_rv
        log.debug("reflector listed reflector=%s items=%d resource_version=%s", self.name, len(listed), list_rv)
        for event in events:
            self._deliver(event)
        if not self._synced.is_set():
            self._synced.set()
        if self.on_synced is not None:
            try:
                self.on_synced()
            except Exception:
                log.exception("reflector on_synced failed reflector=%s", self.name)
        self.lists += 1

    def _watch_once(self) -> int:
        """One watch until it ends cleanly (server timeout); the number of events it carried."""
        stream = self.transport.watch(self.resource.path(self.namespace), query={
            "resourceVersion": self.resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": self.watch_timeout_s, "labelSelector": self.label_selector,
            "fieldSelector": self.field_selector}, read_timeout_s=self.watch_timeout_s + 30)
        with self._lock:
            self._stream = stream
        received = 0
        try:
            if self._stop.is_set():  # stop() ran before it could see this stream
                return received
            for raw in stream:
                received += 1
                if self._stop.is_set():
                    return received
                self._on_watch_event(raw)
            return received
        finally:
            with self._lock:
                self._stream = None
            stream.close()

    def _on_watch_event(self, raw: Obj) -> None:
        kind = raw.get("type")
        obj = raw.get("object")
        if not isinstance(obj, dict):
            raise errors.Unavailable(0, "BadWatchEvent", f"watch event without an object: {raw!r}")
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise _Expired
            raise errors.error_from_status(code or 500, obj)
        rv = objects.resource_version(obj)
        if kind == "BOOKMARK":
            with self._lock:
                if rv:
                    self._resource_version = rv
            return
        if kind not in (ADDED, MODIFIED, DELETED):
            log.warning("unknown watch event reflector=%s type=%s", self.name, kind)
            return
        if self.transform is not None:
            obj = self.transform(obj)
        k = objects.key(obj)
        with self._lock:
            if kind == DELETED:
                self._known.pop(k, None)
            else:
                self._known[k] = obj
            if rv:
                self._resource_version = rv
        self._deliver(WatchEvent(kind, obj))

    def _deliver(self, event: WatchEvent) -> None:
        try:
            self.handler(event)
        except Exception:
            log.exception("reflector handler failed reflector=%s type=%s key=%s", self.name, event.type,
                          "/".join(event.key))
