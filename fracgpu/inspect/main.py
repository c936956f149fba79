"""`fracgpu inspect`: GPUs, shares and tenants of a live cluster (through the kubeconfig) or a snapshot file.

Per node and GPU: model, allocated/total vgpu-core and VRAM, pods, health (unusable nodes with
their reason, stale device-plugin heartbeats included); per tenant: used/hard vgpu-core and VRAM,
the pods waiting for quota and the head of that queue (`view.quota_queues`). Like `kubectl
inspect gpushare`, for shares, VRAM and tenants.

A live cluster is read once (list, no watch) into the same `SnapshotDoc` a snapshot file gives,
and both go through the same view (`fracgpu.inspect.view.build_world` / `inspect_doc`), so the
live answer and the answer for `kubectl get ... -o yaml > snap.yaml` are the same.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from fracgpu.api.v1beta1.names import ANN_INVENTORY, DEFAULT_NAMESPACE, DRA_DRIVER, LABEL_ENABLED, LEASE_PREFIX
from fracgpu.core.records import NODE_NO_HEARTBEAT, NODE_STALE_HEARTBEAT, SnapshotDoc, snapshot_of
from fracgpu.inspect.view import build_world, inspect_doc, render_inspect
from fracgpu.kube import errors, objects
from fracgpu.kube.client import Transport, build_api_client
from fracgpu.kube.resources import LEASES, RESOURCECLAIMS, RESOURCECLAIMTEMPLATES, RESOURCESLICES
from fracgpu.kube.snapshot import SnapshotError, read_snapshot
from fracgpu.kube.writer import KubeWriter
from fracgpu.startup import Flag, Parser, add_config_flag, add_flags, no_cluster

PROG = "fracgpu inspect"
DEFAULT_HEARTBEAT_STALE_S = 40.0  # the extender's default (--heartbeat-stale)
ENV_NAMESPACE = "FRACGPU_NAMESPACE"
# Pods that still hold (or wait for) a share; Succeeded/Failed pods hold nothing.
LIVE_POD_FIELDS = "status.phase!=Succeeded,status.phase!=Failed"

EXIT_USAGE = 2  # bad flags, no usable kubeconfig, unreadable snapshot
EXIT_API = 1  # the API server could not be reached or refused a list


FLAGS = (
    Flag("snapshot", "read a `kubectl get -o yaml` style List of Nodes, Pods, Namespaces, TenantQuotas (and Leases) "
         "instead of a live cluster", metavar="FILE", unset="the live cluster"),
    Flag("kubeconfig", "kubeconfig file", metavar="FILE",
         unset="$KUBECONFIG, then ~/.kube/config, then the in-cluster service account"),
    Flag("context", "kubeconfig context", unset="the current context"),
    Flag("namespace", "fracgpu's namespace, where the device plugins' heartbeat Leases live",
         default=DEFAULT_NAMESPACE, env=(ENV_NAMESPACE,)),
    Flag("heartbeat-stale", "a live node whose heartbeat Lease was renewed longer ago than this is shown stale, "
         "0 = do not judge; the default is the extender's", default=f"{DEFAULT_HEARTBEAT_STALE_S}", type=float,
         metavar="SECONDS"),
    Flag("request-timeout", "seconds each API request may take", default="30.0", type=float, metavar="SECONDS"),
    Flag("output", "table for people, json for scripts", default="table", choices=("table", "json"), short="-o"),
)


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    p = Parser(prog=PROG, description=(__doc__ or "").split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flag(p, env)
    add_flags(p, FLAGS, env)
    return p


# ---- reading ----------------------------------------------------------------------------------
def default_kubeconfig(environ: Mapping[str, str]) -> str | None:
    """kubectl's order: $KUBECONFIG, then ~/.kube/config if it exists; None: in-cluster or nothing."""
    if environ.get("KUBECONFIG"):
        return environ["KUBECONFIG"]
    home = environ.get("HOME")
    path = (Path(home) if home else Path.home()) / ".kube" / "config"
    return str(path) if path.is_file() else None


def fracgpu_node(node: Mapping[str, Any]) -> bool:
    """A node fracgpu manages or reports on: opted in, or carrying a GPU inventory."""
    return objects.labels(node).get(LABEL_ENABLED) == "true" or ANN_INVENTORY in objects.annotations(node)


def fracgpu_part(doc: SnapshotDoc) -> SnapshotDoc:
    """What inspect shows of a cluster: fracgpu's nodes, the pods on them and the unscheduled ones (the
    view keeps the pending GPU pods among them); namespaces, TenantQuotas and Leases as they are.
    The same rule for a live cluster and a snapshot file, so both show the same."""
    nodes = tuple(n for n in doc.nodes if fracgpu_node(n))
    names = {objects.name(n) for n in nodes}
    pods = []
    for pod in doc.pods:
        spec = pod.get("spec")
        node = str(spec.get("nodeName") or "") if isinstance(spec, Mapping) else ""
        if not node or node in names:
            pods.append(pod)
    return replace(doc, nodes=nodes, pods=tuple(pods))


def read_cluster(writer: KubeWriter, namespace: str) -> SnapshotDoc:
    """One read (lists, no watch) of what the view needs, as the snapshot of the cluster it is.

    Nodes, Pods that are not finished (Succeeded/Failed pods hold no share), Namespaces,
    TenantQuotas (none when the CRD is not installed: namespace quotas still apply), the
    device plugins' heartbeat Leases in fracgpu's namespace, and, where the API server serves
    resource.k8s.io/v1, fracgpu's ResourceSlices and the ResourceClaims and their templates (DRA nodes
    and pods, read as a snapshot file's are).
    """
    try:
        quotas = writer.list_tenant_quotas()
    except errors.NotFound:
        quotas = []
    leases = [lease for lease in writer.list_objects(LEASES, namespace=namespace)
              if objects.name(lease).startswith(LEASE_PREFIX)]
    by_kind: dict[str, Sequence[Mapping[str, Any]]] = {
        "Node": writer.list_nodes(), "Pod": writer.list_pods(field_selector=LIVE_POD_FIELDS),
        "Namespace": writer.list_namespaces(), "TenantQuota": quotas, "Lease": leases}
    try:
        by_kind["ResourceSlice"] = writer.list_objects(RESOURCESLICES, field_selector=f"spec.driver={DRA_DRIVER}")
        by_kind["ResourceClaim"] = writer.list_objects(RESOURCECLAIMS)
        by_kind["ResourceClaimTemplate"] = writer.list_objects(RESOURCECLAIMTEMPLATES)
    except errors.NotFound:  # no resource.k8s.io/v1 here: no DRA path
        pass
    return snapshot_of(by_kind)


# ---- the view -------------------------------------------------------------------------------------
def _renew_time(lease: Mapping[str, Any]) -> str:
    spec = lease.get("spec")
    if not isinstance(spec, Mapping):
        return ""
    return str(spec.get("renewTime") or spec.get("acquireTime") or "")


def _epoch(stamp: str) -> float | None:
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def inspect_view(doc: SnapshotDoc, *, now: float | None = None,
                 heartbeat_stale_s: float = DEFAULT_HEARTBEAT_STALE_S) -> dict[str, Any]:
    """The inspect document of a snapshot: `inspect_doc` plus each node's heartbeat Lease.

    `now` (seconds since the epoch) is given for a live cluster: a usable node without a heartbeat
    Lease, or with one renewed more than `heartbeat_stale_s` ago, is shown unusable with the
    extender's reason. A snapshot file is not judged (its moment is unknown), as the extender
    does in snapshot mode; its Leases are only shown.
    """
    view = inspect_doc(build_world(fracgpu_part(doc)))
    renewed = {objects.name(lease)[len(LEASE_PREFIX):]: _renew_time(lease) for lease in doc.leases
               if objects.name(lease).startswith(LEASE_PREFIX)}
    judge = now is not None and heartbeat_stale_s > 0
    for node in view["nodes"]:
        stamp = renewed.get(node["name"])
        at = _epoch(stamp) if stamp else None
        age = None if now is None or at is None else round(now - at, 1)
        node["heartbeat"] = None if stamp is None else {"renewTime": stamp, "age_s": age}
        if not judge or not node["usable"] or node.get("source") == "dra":
            continue  # a DRA node's driver writes no heartbeat Lease (its slices go when it does)
        if stamp is None:
            node["usable"], node["reason"] = False, NODE_NO_HEARTBEAT
        elif age is None or age > heartbeat_stale_s:
            node["usable"], node["reason"] = False, NODE_STALE_HEARTBEAT
    view["heartbeat_stale_s"] = heartbeat_stale_s if judge else None
    return view


def render(view: Mapping[str, Any]) -> str:
    """The tables: nodes and GPUs, tenants (`render_inspect`), then the heartbeats when there are any."""
    text = render_inspect(view)
    nodes = view["nodes"]
    if not any(n.get("heartbeat") for n in nodes) and view.get("heartbeat_stale_s") is None:
        return text
    stale_s = view.get("heartbeat_stale_s")
    lines = ["", f"{'NODE':<20} HEARTBEAT" + (f" (stale after {stale_s:g}s)" if stale_s else "")]
    for n in nodes:
        beat = n.get("heartbeat")
        if beat is None:
            shown = "none"
        elif beat["age_s"] is None:
            shown = f"renewed {beat['renewTime'] or '(never)'}"
        else:
            shown = f"renewed {beat['age_s']:.0f}s ago"
        if n["reason"] == NODE_STALE_HEARTBEAT:
            shown += " (stale)"
        lines.append(f"{n['name']:<20} {shown}")
    return text + "\n".join(lines) + "\n"


# ---- command ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_http_retries() -> Iterator[None]:
    """urllib3 logs each retry of a refused connection at WARNING; the error we print says it all."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _read_live(args: argparse.Namespace, environ: Mapping[str, str], err: TextIO) -> SnapshotDoc | int:
    kubeconfig = args.kubeconfig or default_kubeconfig(environ)
    try:
        api = build_api_client(kubeconfig=kubeconfig, context=args.context, environ=environ)
    except errors.KubeConfigError as e:
        why = no_cluster(e, "give --kubeconfig FILE / --context NAME, set KUBECONFIG, run it in a pod, "
                            "or give --snapshot FILE")
        err.write(f"{PROG}: {why}\n")
        return EXIT_USAGE
    transport = Transport(api, timeout_s=args.request_timeout,
                          connect_timeout_s=min(10.0, args.request_timeout))
    server = str(api.configuration.host)
    try:
        with _quiet_http_retries():
            return read_cluster(KubeWriter(transport, component="fracgpu-inspect"), args.namespace)
    except errors.Unavailable as e:
        err.write(f"{PROG}: cannot reach the API server {server}: {_one_line(e.message)}\n")
    except errors.Forbidden as e:
        err.write(f"{PROG}: the API server {server} refused a read (needs list on nodes, pods, namespaces, "
                  f"tenantquotas, leases in {args.namespace}, and resourceslices, resourceclaims and "
                  f"resourceclaimtemplates where resource.k8s.io/v1 is served): {_one_line(e)}\n")
    except errors.KubeAPIError as e:
        err.write(f"{PROG}: reading the cluster at {server} failed: {_one_line(e)}\n")
    finally:
        transport.close()
    return EXIT_API


def main(argv: Sequence[str], environ: Mapping[str, str] | None = None, *,
         clock: Callable[[], float] = time.time, out: TextIO | None = None, err: TextIO | None = None) -> int:
    env = os.environ if environ is None else environ
    stdout = sys.stdout if out is None else out
    stderr = sys.stderr if err is None else err
    args = build_parser(env).parse_args(list(argv))
    if not (math.isfinite(args.heartbeat_stale) and args.heartbeat_stale >= 0):
        stderr.write(f"{PROG}: --heartbeat-stale {args.heartbeat_stale:g}: must be a number of seconds >= 0 "
                     f"(0: do not judge heartbeats)\n")
        return EXIT_USAGE
    if not (math.isfinite(args.request_timeout) and args.request_timeout > 0):
        stderr.write(f"{PROG}: --request-timeout {args.request_timeout:g}: must be a number of seconds > 0\n")
        return EXIT_USAGE
    now: float | None = None
    if args.snapshot:
        try:
            doc = read_snapshot(args.snapshot)
        except SnapshotError as e:
            stderr.write(f"{PROG}: {e}\n")
            return EXIT_USAGE
    else:
        live = _read_live(args, env, stderr)
        if isinstance(live, int):
            return live
        doc, now = live, clock()
    view = inspect_view(doc, now=now, heartbeat_stale_s=args.heartbeat_stale)
    stdout.write(json.dumps(view, indent=1) + "\n" if args.output == "json" else render(view))
    return 0
