"""The extender turns ready only once every resource had its first full list.

Ready too early is a double allocation after a restart: a bound pod the cache has not listed yet
leaves its GPU looking free.
"""

from __future__ import annotations

import threading

from fracgpu.api.v1beta1.names import DEFAULT_NAMESPACE
from fracgpu.extender.cache import ClusterCache
from fracgpu.extender.scheduler import Scheduler
from fracgpu.kube.client import Transport
from fracgpu.kube.retry import Backoff
from tests.extender.builders import node_obj, pod_obj
from tests.extender.conftest import FakeClock
from tests.fakes.apiserver import FakeApiServer
from tests.poll import eventually
from tests.reliability.harness import heartbeat_off


def test_not_ready_before_the_pods_are_listed(apiserver: FakeApiServer) -> None:
    """Regression: the cache registered the pods reflector only after starting the leases one, so a
    fast leases list could find nothing pending and mark the cache synced before any pod was listed
    (seen as "pod default/a is not a pending GPU pod in the extender's cache" right after a restart,
    about 1 restart in 10 in test_faults; every time with sys.setswitchinterval(1e-6))."""
    apiserver.seed(node_obj("n1", 1), pod_obj("bound", 100, node="n1", phase="Running"))
    for i in range(5):
        transport = Transport(apiserver.api_client(), timeout_s=5)
        gate = threading.Event()
        apiserver.on_next("list", "pods", lambda g=gate: g.wait(5))  # type: ignore[misc]
        clock = FakeClock()
        cache = ClusterCache(transport, Scheduler(heartbeat_off(), clock, wall=clock), namespace=DEFAULT_NAMESPACE,
                             backoff=Backoff(initial_s=0.01, cap_s=0.05))
        cache.start()
        try:
            eventually(lambda c=cache: all(k in c.reflectors and c.reflectors[k].synced  # type: ignore[misc]
                                           for k in ("nodes", "leases", "namespaces", "tenantquotas")))
            assert not cache.synced.is_set(), f"ready while the pod list is still out (attempt {i})"
            gate.set()
            assert cache.synced.wait(5)
            assert cache.scheduler.stats().pods == 1  # the bound pod was listed before ready
        finally:
            gate.set()
            cache.stop()
            transport.close()
