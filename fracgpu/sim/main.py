"""`fracgpu simulate`: replay a workload through the placement core, no cluster needed.

With no arguments: the openb trace's 1,213-node / 6,212-GPU cluster, the default task list, the
FGD paper's protocol (seed 42, inflation 1.3), fracgpu's default policy; prints GPU allocation and
unallocated GPUs at 100 % arrived, the fragmentation ratio, failed tasks by kind, and the
published figures beside ours. See docs/simulate.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TextIO

from fracgpu.core.policies import DEFAULT_POLICY, POLICIES, policy_list
from fracgpu.sim.published import published
from fracgpu.sim.replay import KINDS, Progress, RunResult, run_paper
from fracgpu.sim.trace import DEFAULT_NODES, DEFAULT_TRACE, TraceError, load_nodes, load_tasks, resolve
from fracgpu.startup import add_config_flag

log = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """"42", "42-51" or "42,45,50-51"."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a seed list like 42, 42-51 or 42,45") from None
    if not out:
        raise argparse.ArgumentTypeError("no seeds given")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fracgpu simulate", description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_config_flag(p, {})
    p.add_argument("--protocol", choices=("paper", "cluster"), default="paper",
                   help="paper: the FGD experiment (default); cluster: CPU-only pods placed as kube-scheduler would")
    p.add_argument("--policy", default=DEFAULT_POLICY,
                   help=f"one of {', '.join(POLICIES)}, a comma list, or 'all' (default {DEFAULT_POLICY})")
    p.add_argument("--trace", default=DEFAULT_TRACE, help="task list: a bundled variant (default, gpushare40, ...) "
                   "or a CSV file in the openb pod-list format")
    p.add_argument("--nodes", default=DEFAULT_NODES, help="node list: gpu_node (default), all_node, or a CSV file")
    p.add_argument("--seeds", type=parse_seeds, default=[42], help="seeds, e.g. 42 or 42-51 (default 42)")
    p.add_argument("--inflation", type=float, default=1.3, help="workload inflation ratio (default 1.3)")
    p.add_argument("-o", "--output", choices=("table", "json", "csv"), default="table",
                   help="table for people, json or csv for scripts (default: %(default)s)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="unallocated GPU %% vs arrived load (needs matplotlib) (default: no picture)")
    p.add_argument("-j", "--jobs", type=int, default=0, help="parallel runs (default: CPU count when several runs)")
    p.add_argument("--snapshot", metavar="FILE",
                   help="a cluster snapshot (YAML List of Nodes/Pods/...) (default: none, replay --trace)")
    p.add_argument("--pending", action="store_true",
                   help="with --snapshot: where would the pending pods fit (default: off)")
    p.add_argument("--full", action="store_true",
                   help="replay every task (default: stop just past 100%% arrived, where the report is taken)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (default: a bar)")
    return p


@dataclass(frozen=True, slots=True)
class Job:
    trace: str
    nodes: str
    policy: str
    seed: int
    inflation: float
    protocol: str
    upto: float | None = 101.0  # stop once arrived passes this % (the report needs 100 %)


def _trace_label(arg: str) -> str:
    return arg if not arg.endswith(".csv") else os.path.basename(arg)


def run_job(job: Job, progress: Progress | None = None) -> RunResult:
    nodes = load_nodes(resolve(job.nodes, "node"))
    tasks = load_tasks(resolve(job.trace, "pod"))
    policies = policy_list
    if job.protocol == "cluster":
        from fracgpu.sim.cluster import cluster_policies

        policies = cluster_policies
    return run_paper(nodes, tasks, job.policy, job.seed, policies, inflation=job.inflation,
                     trace=_trace_label(job.trace), progress=progress, upto=job.upto)


class Bar:
    """A one-line progress bar on stderr (\\r); --no-progress turns it off."""

    def __init__(self, out: TextIO, total_runs: int) -> None:
        self.out = out
        self.total_runs = total_runs
        self.done_runs = 0

    def __call__(self, done: int, total: int) -> None:
        frac = (self.done_runs + done / max(1, total)) / max(1, self.total_runs)
        width = 30
        fill = int(frac * width)
        self.out.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}%  run "
                       f"{min(self.done_runs + 1, self.total_runs)}/{self.total_runs}")
        self.out.flush()

    def run_done(self) -> None:
        self.done_runs += 1
        self(0, 1)

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def run_all(jobs: list[Job], workers: int, bar: Bar | None) -> list[RunResult]:
    if workers <= 1 or len(jobs) == 1:
        out = []
        for j in jobs:
            out.append(run_job(j, bar))
            if bar is not None:
                bar.run_done()
        return out
    results: list[RunResult] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for r in pool.map(run_job, jobs):
            results.append(r)
            if bar is not None:
                bar.run_done()
    return results


def summarise(results: Sequence[RunResult], bucket: int = 100) -> list[dict[str, Any]]:
    """One row per (trace, policy): our mean/sd over seeds beside the authors' for the same trace."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.trace, r.policy), []).append(r)
    rows = []
    for (trace, policy), rs in groups.items():
        un = [u for u in (r.unallocated(bucket) for r in rs) if u is not None]
        fr = [f for f in (r.frag_at(bucket) for r in rs) if f is not None]
        pub = published(trace, policy, bucket)
        failed = {k: statistics.fmean(r.failed.get(k, 0) for r in rs) for k in KINDS}
        rows.append({
            "trace": trace,
            "policy": policy,
            "seeds": [r.seed for r in rs],
            "unallocated_pct": statistics.fmean(un) if un else None,
            "unallocated_sd": statistics.stdev(un) if len(un) > 1 else 0.0,
            "unallocated_gpus": (statistics.fmean(un) / 100 * rs[0].capacity / 1000) if un else None,
            "allocation_pct": 100 - statistics.fmean(un) if un else None,
            "frag_ratio_pct": statistics.fmean(fr) if fr else None,
            "failed_tasks": failed,
            "published_unallocated_pct": pub.mean if pub else None,
            "published_sd": pub.sd if pub else None,
            "published_same_seeds_pct": (statistics.fmean(pub.per_seed[s] for s in (r.seed for r in rs)
                                                          if s in pub.per_seed)
                                         if pub and any(r.seed in pub.per_seed for r in rs) else None),
            "tasks": rs[0].tasks,
            "seconds": statistics.fmean(r.seconds for r in rs),
        })
    return rows


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render_table(rows: list[dict[str, Any]], bucket: int, protocol: str = "paper") -> str:
    out = io.StringIO()
    out.write(f"At {bucket}% arrived GPU load ({protocol} protocol; mean over seeds):\n")
    head = f"{'trace':<12} {'policy':<12} {'unalloc %':>10} {'± sd':>6} {'GPUs':>6} {'alloc %':>8} " \
           f"{'frag %':>7} {'paper %':>8} {'± sd':>6}  failed tasks by kind"
    out.write(head + "\n" + "-" * len(head) + "\n")
    for r in rows:
        failed = ", ".join(f"{k} {v:.0f}" for k, v in r["failed_tasks"].items() if v)
        out.write(f"{r['trace']:<12} {r['policy']:<12} {_fmt(r['unallocated_pct']):>10} "
                  f"{_fmt(r['unallocated_sd']):>6} {_fmt(r['unallocated_gpus'], 0):>6} "
                  f"{_fmt(r['allocation_pct']):>8} {_fmt(r['frag_ratio_pct'], 1):>7} "
                  f"{_fmt(r['published_unallocated_pct']):>8} {_fmt(r['published_sd']):>6}  {failed or 'none'}\n")
    fgd = published(rows[0]["trace"], "fgd", bucket) if rows else None
    if fgd is not None:
        out.write(f"\npublished FGD on {rows[0]['trace']}: {fgd.mean:.2f} ± {fgd.sd:.2f} % unallocated "
                  f"(seeds {min(fgd.per_seed)}-{max(fgd.per_seed)}); paper % = the authors' mean over their seeds.\n")
    out.write("frag % = fragmented share of idle GPU (FGD's measure against the trace's typical tasks).\n")
    return out.getvalue()


def render_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    cols = ["trace", "policy", "seeds", "unallocated_pct", "unallocated_sd", "unallocated_gpus", "allocation_pct",
            "frag_ratio_pct", "published_unallocated_pct", "published_sd", "tasks", "seconds",
            *[f"failed_{k}" for k in KINDS]]
    w = csv.writer(out)
    w.writerow(cols)
    for r in rows:
        flat = {**r, "seeds": " ".join(str(s) for s in r["seeds"]),
                **{f"failed_{k}": v for k, v in r["failed_tasks"].items()}}
        w.writerow(["" if flat.get(c) is None else flat[c] for c in cols])
    return out.getvalue()


def plot(results: Sequence[RunResult], path: str) -> str | None:
    """Fig. 9a: unallocated GPU % vs arrived %, median over seeds per policy, and the ideal line."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "--plot needs matplotlib (pip install 'fracgpu[plot]'); skipped"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_policy: dict[str, list[RunResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    xs = list(range(75, 121))
    for policy, rs in by_policy.items():
        ys = []
        for x in xs:
            vals = [u for u in (r.unallocated(x) for r in rs) if u is not None]
            ys.append(statistics.median(vals) if vals else float("nan"))
        ax.plot(xs, ys, label=policy)
    ax.plot(xs, [max(0, 100 - x) for x in xs], "k--", label="ideal")
    ax.set_xlabel("arrived workload (% of cluster GPU capacity)")
    ax.set_ylabel("unallocated GPU (%)")
    ax.set_ylim(0, 30)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.snapshot or args.pending:
        from fracgpu.sim.whatif import main_snapshot

        return main_snapshot(args.snapshot, args.pending, args.policy, args.output, sys.stdout, sys.stderr)
    policies = list(POLICIES) if args.policy == "all" else [p.strip() for p in args.policy.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"fracgpu simulate: unknown policy {unknown[0]!r}; known: {', '.join(POLICIES)}, all", file=sys.stderr)
        return 2
    traces = [t.strip() for t in args.trace.split(",") if t.strip()]
    try:
        for t in traces:
            resolve(t, "pod")
        resolve(args.nodes, "node")
    except TraceError as e:
        print(f"fracgpu simulate: {e}", file=sys.stderr)
        return 2
    if args.inflation <= 0:
        print("fracgpu simulate: --inflation must be positive", file=sys.stderr)
        return 2
    upto = None if args.plot or args.full else 101.0
    jobs = [Job(t, args.nodes, p, s, args.inflation, args.protocol, upto) for t in traces for p in policies
            for s in args.seeds]
    workers = args.jobs or (min(len(jobs), os.cpu_count() or 1) if len(jobs) > 1 else 1)
    bar = None if args.no_progress else Bar(sys.stderr, len(jobs))
    try:
        results = run_all(jobs, workers, bar)
    except TraceError as e:
        print(f"fracgpu simulate: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    rows = summarise(results)
    if args.output == "json":
        json.dump({"bucket": 100, "summary": rows,
                   "runs": [{"trace": r.trace, "policy": r.policy, "seed": r.seed, "tasks": r.tasks,
                             "unallocated_pct": r.unallocated(100), "frag_ratio_pct": r.frag_at(100),
                             "failed_tasks": r.failed, "alloc_curve": r.alloc, "seconds": r.seconds}
                            for r in results]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.output == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        sys.stdout.write(render_table(rows, 100, args.protocol))
    if args.plot:
        msg = plot(results, args.plot)
        if msg:
            print(f"fracgpu simulate: {msg}", file=sys.stderr)
    return 0
