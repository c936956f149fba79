"""`fracgpu simulate`: replay a workload through the placement core, no cluster needed.

With no arguments: the openb trace's 1,213-node / 6,212-GPU cluster, the default task list, the
FGD paper's protocol (seed 42, inflation 1.3), fracgpu's default policy and FGD on the same seed;
prints the unallocated GPUs at 100 % arrived and the failed tasks by kind of each, the FGD paper's
published figure beside them, and fracgpu's difference to FGD. See docs/simulate.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fracgpu.core.policies import DEFAULT_POLICY, POLICIES, policy_list
from fracgpu.sim.published import published
from fracgpu.sim.replay import KINDS, Progress, RunResult, paper_sequence, run_paper
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


PAPER_INFLATION = 1.3
DEFAULT_COMPARE = "fgd"  # run beside the default policy so the table compares like for like
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


@dataclass(frozen=True, slots=True)
class Setting:
    """What every run of one invocation shares, for the report's header and published figures."""

    protocol: str
    inflation: float
    seeds: tuple[int, ...]
    nodes: str
    node_count: int
    gpus: int

    @property
    def published_comparable(self) -> bool:
        """The FGD paper ran its protocol on gpu_node at inflation 1.3 only."""
        return self.protocol == "paper" and self.nodes == DEFAULT_NODES and self.inflation == PAPER_INFLATION


def seed_text(seeds: Sequence[int]) -> str:
    """[42] -> "seed 42"; [42..51] -> "seeds 42-51"; [1, 5, 6] -> "seeds 1,5-6"."""
    ss = sorted(set(seeds))
    parts: list[str] = []
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[j] + 1:
            j += 1
        parts.append(str(ss[i]) if i == j else f"{ss[i]}-{ss[j]}")
        i = j + 1
    return ("seed " if len(ss) == 1 else "seeds ") + ",".join(parts)


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


def summarise(results: Sequence[RunResult], bucket: int = 100, *, published_too: bool = True) -> list[dict[str, Any]]:
    """One row per (trace, policy): our mean/sd over seeds beside the authors' for the same trace
    (only when `published_too`: the same protocol, cluster and inflation as theirs)."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.trace, r.policy), []).append(r)
    rows = []
    for (trace, policy), rs in groups.items():
        un = [u for u in (r.unallocated(bucket) for r in rs) if u is not None]
        fr = [f for f in (r.frag_at(bucket) for r in rs) if f is not None]
        pub = published(trace, policy, bucket) if published_too else None
        failed = {k: statistics.fmean(r.failed.get(k, 0) for r in rs) for k in KINDS}
        rows.append({
            "trace": trace,
            "policy": policy,
            "seeds": [r.seed for r in rs],
            "unallocated_pct": statistics.fmean(un) if un else None,
            "unallocated_sd": statistics.stdev(un) if len(un) > 1 else None,
            "unallocated_gpus": (statistics.fmean(un) / 100 * rs[0].capacity / MILLI) if un else None,
            "capacity_gpus": rs[0].capacity // MILLI,
            "allocation_pct": 100 - statistics.fmean(un) if un else None,
            "frag_ratio_pct": statistics.fmean(fr) if fr else None,
            "failed_tasks": failed,
            "published_unallocated_pct": pub.mean if pub else None,
            "published_sd": pub.sd if pub else None,
            "published_seeds": sorted(pub.per_seed) if pub else None,
            "published_same_seeds_pct": (statistics.fmean(pub.per_seed[s] for s in (r.seed for r in rs)
                                                          if s in pub.per_seed)
                                         if pub and any(r.seed in pub.per_seed for r in rs) else None),
            "tasks": rs[0].tasks,
            "seconds": statistics.fmean(r.seconds for r in rs),
        })
    return rows


def _pct(value: float | None, sd: float | None) -> str:
    """A percentage and, when there is one, its spread: the '±' column is blank for one seed."""
    if value is None:
        return f"{'-':>7} {'':<6}"
    return f"{value:>7.2f} {'' if sd is None else f'± {sd:.2f}':<6}"


def render_table(rows: list[dict[str, Any]], setting: Setting) -> str:
    out = io.StringIO()
    seeds = seed_text(setting.seeds)
    several = len(setting.seeds) > 1
    out.write("Unallocated GPUs when the tasks that arrived ask for 100 % of the cluster's GPUs "
              "(lower is better).\n")
    out.write(f"{setting.protocol} protocol, inflation {setting.inflation:g}, {seeds}"
              f"{f' (mean ± sd over {len(setting.seeds)} runs each)' if several else ''}; "
              f"nodes {setting.nodes}: {setting.node_count} nodes, {setting.gpus} GPUs.\n\n")
    # (trace, policy, unallocated %, unallocated GPUs, last column), then a comparison line per trace
    lines: list[tuple[str, str, str, str, str] | str] = []
    for trace in dict.fromkeys(r["trace"] for r in rows):
        ours = [r for r in rows if r["trace"] == trace]
        for r in ours:
            failed = ", ".join(f"{k} {v:.0f}" for k, v in r["failed_tasks"].items() if v)
            lines.append((trace, r["policy"], _pct(r["unallocated_pct"], r["unallocated_sd"]),
                          _fmt(r["unallocated_gpus"], 0 if setting.gpus >= 100 else 1), failed or "none"))
        if setting.published_comparable:
            shown = [r["policy"] for r in ours if r["published_unallocated_pct"] is not None] or [DEFAULT_COMPARE]
            for policy in shown:
                pub = published(trace, policy, 100)
                if pub is not None:
                    lines.append((trace, f"{policy} (published)", _pct(pub.mean, pub.sd),
                                  f"{pub.mean / 100 * setting.gpus:.0f}",
                                  f"the FGD paper's mean ± sd over its {seed_text(sorted(pub.per_seed))} "
                                  "(other random draws than ours)"))
        by_policy = {r["policy"]: r["unallocated_pct"] for r in ours}
        ours_pct, theirs_pct = by_policy.get(DEFAULT_POLICY), by_policy.get(DEFAULT_COMPARE)
        if ours_pct is not None and theirs_pct is not None:
            diff = round((theirs_pct - ours_pct) / 100 * setting.gpus)
            than = (f"{abs(diff)} {'fewer' if diff > 0 else 'more'} GPUs unallocated than" if diff
                    else "as many GPUs unallocated as")
            lines.append(f"on the same {seeds}, {DEFAULT_POLICY} leaves {than} {DEFAULT_COMPARE}"
                         f"{' (means)' if several else ''}")
    rows_only = [x for x in lines if isinstance(x, tuple)]
    tw = max(len("trace"), *(len(x[0]) for x in rows_only))
    pw = max(len("policy"), *(len(x[1]) for x in rows_only))
    head = f"{'trace':<{tw}}  {'policy':<{pw}}  {'unallocated %':<14}  unallocated GPUs  failed tasks by kind"
    out.write(head + "\n" + "-" * len(head) + "\n")
    for x in lines:
        if isinstance(x, str):
            out.write(f"{'':<{tw}}  {x}\n")
        else:
            out.write(f"{x[0]:<{tw}}  {x[1]:<{pw}}  {x[2]:<14}  {x[3]:>16}  {x[4]}\n")
    if not setting.published_comparable:
        out.write("\nNo published figures: the FGD paper ran its own protocol on gpu_node at inflation 1.3 only.\n")
    out.write(f"\nfailed tasks{' (mean per run)' if several else ''}: arrived before 100 % but fitted on no node "
              "(dropped, as in the paper).\n")
    return out.getvalue()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


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


def figure(results: Sequence[RunResult], setting: Setting) -> Any:
    """The paper's Fig. 9a per trace: unallocated GPU % against arrived load, the median over seeds
    per policy, the ideal line, and the published FGD figure at 100 % when it applies.
    A matplotlib Figure (not attached to pyplot: nothing global to close)."""
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    traces = list(dict.fromkeys(r.trace for r in results))
    fig = Figure(figsize=(7 * len(traces), 4.5))
    axes = fig.subplots(1, len(traces), squeeze=False)
    xs = list(range(85, 121))
    several = len(setting.seeds) > 1
    for ax, trace in zip(axes[0], traces, strict=True):
        by_policy: dict[str, list[RunResult]] = {}
        for r in results:
            if r.trace == trace:
                by_policy.setdefault(r.policy, []).append(r)
        top = 0.0
        for policy, rs in by_policy.items():
            ys = []
            for x in xs:
                vals = [u for u in (r.unallocated(x) for r in rs) if u is not None]
                ys.append(statistics.median(vals) if vals else float("nan"))
            top = max([top, *(y for y in ys if math.isfinite(y))])
            ax.plot(xs, ys, label=policy, linewidth=2.2 if policy == DEFAULT_POLICY else 1.4)
        pub = published(trace, DEFAULT_COMPARE, 100) if setting.published_comparable else None
        if pub is not None:
            ax.errorbar([100], [pub.mean], yerr=[pub.sd], fmt="o", color="black", capsize=3,
                        label=f"FGD as published ({len(pub.per_seed)}-seed mean)")
        ax.plot(xs, [max(0, 100 - x) for x in xs], "k--", linewidth=1, label="ideal (all arrived allocated)")
        ax.axvline(100, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"trace {trace}, {seed_text(setting.seeds)}{' (median)' if several else ''}, "
                     f"{setting.protocol} protocol")
        ax.set_xlabel("arrived workload (% of the cluster's GPU capacity)")
        ax.set_ylabel("unallocated GPU (% of capacity), lower is better")
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(0, min(100.0, max(16.0, top * 1.1)))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"fracgpu simulate: unallocated GPUs vs arrived load on {setting.nodes} "
                 f"({setting.gpus} GPUs)")
    fig.tight_layout()
    return fig


def plot(results: Sequence[RunResult], path: str, setting: Setting) -> None:
    figure(results, setting).savefig(path)


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
    inputs = ", ".join(f"{t} ({_plural(n, 'task')})" for t, n in counts.items())
    print(f"fracgpu simulate: {named} on {inputs}, "
          f"{seed_text(args.seeds)}: {_plural(len(jobs), 'run')}, {workers} at a time", file=sys.stderr)
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
