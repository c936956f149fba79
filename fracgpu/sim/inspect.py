"""`fracgpu inspect`: per node and GPU (model, allocated/total cores and VRAM, pods, health) and per tenant
(used/hard/pending/queue), from a snapshot file. Like `kubectl inspect gpushare`, for shares, VRAM and tenants.
"""

from __future__ import annotations

import argparse
import json
import sys

from fracgpu.kube.snapshot import SnapshotError, read_snapshot
from fracgpu.sim.whatif import build_world, inspect_doc, render_inspect


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fracgpu inspect", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--snapshot", metavar="FILE", help="a `kubectl get -o yaml` style List of Nodes, Pods, "
                   "Namespaces and TenantQuotas")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    args = p.parse_args(argv)
    if not args.snapshot:
        print("fracgpu inspect: give --snapshot FILE (reading a live cluster through the kubeconfig is not "
              "implemented yet; `kubectl get nodes,pods,namespaces,tenantquotas -A -o yaml > snap.yaml` "
              "makes a snapshot)", file=sys.stderr)
        return 2
    try:
        doc = inspect_doc(build_world(read_snapshot(args.snapshot)))
    except SnapshotError as e:
        print(f"fracgpu inspect: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.output == "json" else render_inspect(doc))
    return 0
