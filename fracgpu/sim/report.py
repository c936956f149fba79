"""What `fracgpu simulate` reports: the per-policy summary over seeds, as a table, CSV or a plot."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fracgpu.core.policies import DEFAULT_POLICY
from fracgpu.sim.published import published
from fracgpu.sim.replay import KINDS, RunResult
from fracgpu.sim.trace import DEFAULT_NODES, MILLI

PAPER_INFLATION = 1.3
DEFAULT_COMPARE = "fgd"  # run beside the default policy so the table compares like for like
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


def plural(n: int, word: str) -> str:
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
