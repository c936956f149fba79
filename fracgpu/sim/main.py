"""`fracgpu simulate`: replay a workload through the placement core, no cluster needed.

With no arguments: the openb trace's 1,213-node / 6,212-GPU cluster, the default task list, the
FGD paper's protocol (seed 42, inflation 1.3), fracgpu's default policy and FGD on the same seed;
prints the unallocated GPUs at 100 % arrived and the failed tasks by kind of each, the FGD paper's
published figure beside them, and fracgpu's difference to FGD. See docs/simulate.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fracgpu.core.policies import DEFAULT_POLICY, POLICIES, policy_list
from fracgpu.sim.replay import Progress, RunResult, paper_sequence, run_paper
from fracgpu.sim.report import (
    DEFAULT_COMPARE,
    PAPER_INFLATION,
    Setting,
    plot,
    plural,
    render_csv,
    render_table,
    seed_text,
    summarise,
)
from fracgpu.sim.trace import (
    DEFAULT_NODES,
    DEFAULT_TRACE,
    MILLI,
    NodeRow,
    TraceError,
    load_nodes,
    load_tasks,
    resolve,
)
from fracgpu.startup import Flag, add_config_flag, add_flags

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
    return list(dict.fromkeys(out))  # a seed given twice is one run, not two samples


PLOT_BASELINE = "best-fit"  # and beside those on the plot
INFLATION_RANGE = (1.0, 10.0)
PLOT_UPTO = 121.0  # the plot's x axis ends at 120 % arrived
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


FLAGS = (
    Flag("protocol", "paper: the FGD experiment; cluster: CPU-only pods placed as kube-scheduler would",
         default="paper", choices=("paper", "cluster")),
    Flag("policy", f"one of {', '.join(POLICIES)}, a comma list, or 'all'",
         unset=f"{DEFAULT_POLICY} and {DEFAULT_COMPARE} on the same seeds; with --plot also {PLOT_BASELINE}"),
    Flag("trace", "task list: a bundled variant (default, gpushare40, ...), a CSV file in the openb pod-list "
         "format, or a comma list of them", default=DEFAULT_TRACE),
    Flag("nodes", "node list: gpu_node, all_node, or a CSV file", default=DEFAULT_NODES),
    Flag("seeds", "seeds, e.g. 42 or 42-51", default="42", type=parse_seeds),
    Flag("inflation", f"the workload replayed, as a multiple of the cluster's GPU capacity, from "
         f"{INFLATION_RANGE[0]:g} to {INFLATION_RANGE[1]:g} ({PAPER_INFLATION:g} is the paper's)",
         default=str(PAPER_INFLATION), type=float),
    Flag("output", "table, json (with per-run curves) or csv", default="table", choices=("table", "json", "csv"),
         short="-o"),
    Flag("plot", "draw unallocated GPU % vs arrived load to FILE (.png, .svg or .pdf; needs matplotlib); replays "
         "each run to 121 % arrived", metavar="FILE.png", unset="no picture"),
    Flag("jobs", "parallel runs, at least 1", type=int, short="-j", unset="one per CPU, at most one per run"),
    Flag("snapshot", "a cluster snapshot (YAML List of Nodes/Pods/...)", metavar="FILE",
         unset="none, replay --trace"),
    Flag("pending", "with --snapshot: where would the pending pods fit", switch=True),
    Flag("full", "replay every task, not only to just past 100 % arrived, where the report is taken", switch=True),
    Flag("no-progress", "no progress bar (without it, a bar is drawn only when stderr is a terminal)", switch=True),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fracgpu simulate", description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_config_flag(p, {})
    add_flags(p, FLAGS, {})
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
        from fracgpu.sim.defaultscheduler import cluster_policies

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


class UsageError(ValueError):
    """A flag value or input the run cannot use; the message names it and what is allowed."""


def check_inflation(value: float) -> None:
    lo, hi = INFLATION_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UsageError(f"--inflation {value:g}: must be a number from {lo:g} to {hi:g} (the workload replayed, as a "
                         f"multiple of the cluster's GPU capacity; the report is taken at 100 % arrived)")


def check_jobs(value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"-j {value}: must be at least 1 (parallel runs; leave it out for one per CPU)")


def check_plot(path: str) -> None:
    """Before the runs, not after: a path that cannot be written, or no matplotlib, is known now."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"--plot {path}: is a directory; give a file such as {target / 'simulate.png'}")
    if target.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: give a file name ending in {', '.join(PLOT_SUFFIXES)}")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"--plot {path}: the directory {parent} does not exist; create it "
                         f"(mkdir -p {parent}) or give another path")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--plot {path}: the directory {parent} is not writable; give another path")
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install '.[plot]' in a clone of fracgpu "
                         "(or pip install matplotlib)") from None


def choose_policies(arg: str | None, plotting: bool) -> list[str]:
    if arg is None:
        return [DEFAULT_POLICY, DEFAULT_COMPARE, *([PLOT_BASELINE] if plotting else [])]
    policies = list(POLICIES) if arg == "all" else list(dict.fromkeys(p.strip() for p in arg.split(",") if p.strip()))
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise UsageError(f"unknown policy {(unknown or [arg])[0]!r}; known: {', '.join(POLICIES)}, all")
    return policies


def load_inputs(traces: Sequence[str], nodes_arg: str, seeds: Sequence[int], inflation: float
                ) -> tuple[dict[str, int], list[NodeRow]]:
    """Read every input once before any run, and refuse what would give an empty or wrong report.

    The report is taken at 100 % arrived: a trace whose replayed sequence never gets there (no
    tasks, no GPU task, too few for the cluster at this inflation) would print a row of "-" or,
    worse, a figure taken at a lower load. Returns the task count per trace and the nodes."""
    nodes = load_nodes(resolve(nodes_arg, "node"))
    gpus = sum(n.gpus for n in nodes)
    if not nodes:
        raise UsageError(f"node list {nodes_arg}: no nodes, only a header line")
    if gpus == 0:
        raise UsageError(f"node list {nodes_arg}: no node has a GPU (column gpu), so there is nothing to allocate")
    counts: dict[str, int] = {}
    for trace in traces:
        tasks = load_tasks(resolve(trace, "pod"))
        if not tasks:
            raise UsageError(f"trace {trace}: no tasks, only a header line")
        if not any(t.gpu_request for t in tasks):
            raise UsageError(f"trace {trace}: no task asks for a GPU (num_gpu and gpu_milli), "
                             f"so there is no GPU allocation to measure")
        for seed in seeds:
            seq = paper_sequence(tasks, seed, inflation, gpus * MILLI)
            reach = 100 * sum(t.gpu_request for t in seq) / (gpus * MILLI)
            if round(reach) < 100:  # the bucket the report reads (replay.py rounds the same way)
                raise UsageError(f"trace {trace} at --inflation {inflation:g} (seed {seed}) asks for only "
                                 f"{reach:.1f} % of the {gpus} GPUs of {nodes_arg}, and the report is taken at 100 %: "
                                 f"raise --inflation, or give a bigger trace or fewer nodes")
        counts[_trace_label(trace)] = len(tasks)
    return counts, nodes


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.snapshot or args.pending:
        from fracgpu.sim.pending import main_snapshot

        return main_snapshot(args.snapshot, args.pending, args.policy or DEFAULT_POLICY, args.output,
                             sys.stdout, sys.stderr)
    traces = [t.strip() for t in args.trace.split(",") if t.strip()]
    try:
        check_inflation(args.inflation)
        check_jobs(args.jobs)
        if args.plot:
            check_plot(args.plot)
        policies = choose_policies(args.policy, bool(args.plot))
        if not traces:
            raise UsageError(f"--trace {args.trace!r}: give a bundled trace name or a CSV file")
        counts, nodes = load_inputs(traces, args.nodes, args.seeds, args.inflation)
    except (UsageError, TraceError) as e:
        print(f"fracgpu simulate: {e}", file=sys.stderr)
        return 2
    gpus = sum(n.gpus for n in nodes)
    setting = Setting(args.protocol, args.inflation, tuple(args.seeds), args.nodes, len(nodes), gpus)
    upto = None if args.full else PLOT_UPTO if args.plot else 101.0
    jobs = [Job(t, args.nodes, p, s, args.inflation, args.protocol, upto) for t in traces for p in policies
            for s in args.seeds]
    workers = min(len(jobs), args.jobs or os.cpu_count() or 1)
    named = ", ".join(policies) if args.policy is not None else \
        f"{DEFAULT_POLICY} and, for comparison, {' and '.join(policies[1:])}"
    inputs = ", ".join(f"{t} ({plural(n, 'task')})" for t, n in counts.items())
    print(f"fracgpu simulate: {named} on {inputs}, "
          f"{seed_text(args.seeds)}: {plural(len(jobs), 'run')}, {workers} at a time", file=sys.stderr)
    if args.plot and not args.full:
        print(f"fracgpu simulate: --plot replays each run to {PLOT_UPTO:g} % arrived (the report alone stops "
              f"at 101 %), a little longer per run"
              + (f"; it adds {PLOT_BASELINE} as a baseline" if args.policy is None else ""), file=sys.stderr)
    bar = Bar(sys.stderr, len(jobs)) if not args.no_progress and sys.stderr.isatty() else None
    try:
        results = run_all(jobs, workers, bar)
    except TraceError as e:
        print(f"fracgpu simulate: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    rows = summarise(results, published_too=setting.published_comparable)
    if args.output == "json":
        json.dump({"bucket": 100, "protocol": args.protocol, "inflation": args.inflation, "seeds": args.seeds,
                   "nodes": args.nodes, "gpus": gpus, "summary": rows,
                   "runs": [{"trace": r.trace, "policy": r.policy, "seed": r.seed, "tasks": r.tasks,
                             "unallocated_pct": r.unallocated(100), "frag_ratio_pct": r.frag_at(100),
                             "failed_tasks": r.failed, "alloc_curve": r.alloc, "seconds": r.seconds}
                            for r in results]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.output == "csv":
        sys.stdout.write(render_csv(rows))
    else:
        sys.stdout.write(render_table(rows, setting))
    sys.stdout.flush()
    if args.plot:
        try:
            plot(results, args.plot, setting)
        except OSError as e:
            print(f"fracgpu simulate: --plot {args.plot}: cannot write it: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"fracgpu simulate: wrote {args.plot}", file=sys.stderr)
    return 0
