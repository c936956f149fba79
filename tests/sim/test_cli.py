"""`fracgpu simulate` end to end on a tiny trace: outputs, options, errors."""

from __future__ import annotations

import json
import os
import select
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fracgpu.cli import main as cli_main
from fracgpu.core.policies import policy_list
from fracgpu.sim.main import Job, parse_seeds, run_job
from fracgpu.sim.published import published
from fracgpu.sim.replay import RunResult, run_paper
from fracgpu.sim.report import Setting, figure, render_table, summarise
from fracgpu.sim.trace import load_nodes, load_tasks

NODES = """sn,cpu_milli,memory_mib,gpu,model
n0,32000,131072,2,T4
n1,32000,131072,2,T4
n2,64000,262144,4,V100M32
"""
TASKS = """name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
t0,4000,8192,1,500,,LS,Running,0,1,0
t1,4000,8192,1,250,,LS,Running,0,1,0
t2,8000,8192,2,1000,,LS,Running,0,1,0
t3,2000,4096,0,0,,BE,Running,0,1,0
t4,4000,8192,1,1000,V100M32,LS,Running,0,1,0
t5,4000,8192,1,750,T4,LS,Running,0,1,0
"""


@pytest.fixture
def tiny_trace(tmp_path: Path) -> tuple[str, str]:
    """Three nodes (8 GPUs) and six tasks of every kind: share, whole, 2-GPU, CPU-only, model-bound."""
    nodes, tasks = tmp_path / "nodes.csv", tmp_path / "tasks.csv"
    nodes.write_text(NODES)
    tasks.write_text(TASKS)
    return str(nodes), str(tasks)


def test_table_report(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "fgd,fracgpu", "-j", "1"]) == 0
    out, err = capsys.readouterr()
    assert "unallocated %" in out and "fgd" in out and "fracgpu" in out
    assert "fgd, fracgpu on tasks.csv (6 tasks), seed 42: 2 runs, 1 at a time" in err  # what runs, said up front


def test_json_and_csv(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    args = ["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "all", "--seeds", "1-2",
            "--no-progress", "-j", "1"]
    assert cli_main([*args, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["runs"]) == 7 * 2
    assert (doc["seeds"], doc["protocol"], doc["gpus"]) == ([1, 2], "paper", 8)
    assert {r["policy"] for r in doc["summary"]} == {"random", "dot-product", "clustering", "packing", "best-fit",
                                                      "fgd", "fracgpu"}
    # the reported figures are the simulator's own: each policy replayed through its API on the same seeds
    loaded_nodes, loaded_tasks = load_nodes(Path(nodes)), load_tasks(Path(tasks))
    for r in doc["summary"]:
        direct = [run_paper(loaded_nodes, loaded_tasks, r["policy"], seed, policy_list, upto=101.0).unallocated(100)
                  for seed in (1, 2)]
        assert None not in direct
        assert r["unallocated_pct"] == pytest.approx(statistics.fmean(u for u in direct if u is not None))
        assert r["unallocated_gpus"] == pytest.approx(r["unallocated_pct"] / 100 * 8)
        assert r["published_unallocated_pct"] is None  # a user trace has no published figures
    for run in doc["runs"]:
        assert run["unallocated_pct"] == pytest.approx(100 - run["alloc_curve"][str(max(
            int(b) for b in run["alloc_curve"] if int(b) <= 100))])
    assert cli_main([*args, "--policy", "best-fit", "-o", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trace,policy,seeds,unallocated_pct") and len(lines) == 2


def _our_rows(out: str) -> dict[str, str]:
    """policy -> its table row (rows start with the trace name)."""
    return {line.split()[1]: line for line in out.splitlines() if line.startswith("tasks.csv ")}


def test_by_default_fracgpu_and_fgd_run_on_the_same_seed(tiny_trace: tuple[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """What a newcomer reads: the seed, lower is better, labelled columns, a like-for-like comparison."""
    nodes, tasks = tiny_trace
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks]) == 0
    out, err = capsys.readouterr()
    assert "fracgpu and, for comparison, fgd on tasks.csv (6 tasks), seed 42: 2 runs" in err
    assert "(lower is better)" in out and "seed 42;" in out
    assert "unallocated GPUs" in out.splitlines()[3]  # the GPUs column says what it counts
    assert set(_our_rows(out)) == {"fracgpu", "fgd"}
    assert "on the same seed 42, fracgpu leaves" in out
    assert "±" not in out and "mean over seeds" not in out  # one seed: no spread to show
    assert "frag" not in out  # not in the default table (it is in -o json / csv)
    assert "published" not in out.split("No published figures")[0]  # a user's trace: none


def test_several_seeds_give_mean_and_spread(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "best-fit", "--seeds", "1-3",
                     "-j", "1"]) == 0
    out = capsys.readouterr().out
    assert "seeds 1-3 (mean ± sd over 3 runs each)" in out
    assert "±" in _our_rows(out)["best-fit"]


def _run(trace: str, policy: str, seed: int, unallocated: float) -> RunResult:
    """A finished run as replay() returns it: allocation % per arrived-% bucket."""
    return RunResult(policy=policy, seed=seed, trace=trace, tasks=8152, capacity=6212 * 1000,
                     alloc={99: 99 - unallocated, 100: 100 - unallocated}, failed={"share": 3})


PAPER = Setting("paper", 1.3, (42,), "gpu_node", 1213, 6212)


def test_each_trace_gets_its_published_line() -> None:
    results = [_run(t, p, 42, u) for t, p, u in (("default", "fracgpu", 3.8), ("default", "fgd", 4.8),
                                                 ("gpushare40", "fracgpu", 3.0), ("gpushare40", "fgd", 5.0))]
    out = render_table(summarise(results), PAPER)
    published_lines = [line for line in out.splitlines() if "(published)" in line]
    assert [line.split()[0] for line in published_lines] == ["default", "gpushare40"]
    fgd_default = published("default", "fgd")
    assert fgd_default is not None
    assert f"{fgd_default.mean:.2f} ± {fgd_default.sd:.2f}" in published_lines[0]
    assert "mean ± sd over its seeds 42-51" in published_lines[0]
    assert "on the same seed 42, fracgpu leaves 62 fewer GPUs unallocated than fgd" in out  # (4.8-3.8) % of 6212


@pytest.mark.parametrize("setting", [replace(PAPER, protocol="cluster"), replace(PAPER, nodes="all_node"),
                                     replace(PAPER, inflation=1.5)], ids=["cluster", "all_node", "inflation"])
def test_no_published_line_where_the_paper_did_not_run(setting: Setting) -> None:
    out = render_table(summarise([_run("default", "fgd", 42, 4.8)], published_too=setting.published_comparable),
                       setting)
    assert "(published)" not in out and "4.77" not in out
    assert "No published figures" in out


def test_cluster_protocol(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--protocol", "cluster", "--no-progress"]) == 0
    assert "cluster protocol" in capsys.readouterr().out


def test_progress_bar_only_on_a_terminal(tiny_trace: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    argv = ["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "fgd", "-j", "1"]
    assert cli_main(argv) == 0
    assert "[#" not in capsys.readouterr().err  # captured: not a terminal
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        assert cli_main(argv) == 0
    shown = b""
    while select.select([master], [], [], 0)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the slave side is closed and drained
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert b"run 1/1" in shown and b"[###" in shown


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_titled_picture(tiny_trace: tuple[str, str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--plot (matplotlib: the `plot` extra, also in `test`) draws Fig. 9a; by default fracgpu with FGD and
    best-fit as baselines, and says so before the runs."""
    from PIL import Image

    nodes, tasks = tiny_trace
    png = tmp_path / "fig9a.png"
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--seeds", "1-2", "--no-progress", "-j", "1",
                     "--plot", str(png)]) == 0
    err = capsys.readouterr().err
    assert "fracgpu and, for comparison, fgd and best-fit" in err and "6 runs" in err
    assert "--plot replays each run to 121 % arrived" in err and "it adds best-fit as a baseline" in err
    assert err.rstrip().endswith(f"wrote {png}")
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        img.verify()  # a complete, uncorrupted PNG
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (700, 450)  # figsize 7 x 4.5 in at 100 dpi


def test_the_figure_says_what_it_shows(tiny_trace: tuple[str, str]) -> None:
    nodes, tasks = tiny_trace
    results = [run_job(Job(tasks, nodes, p, s, 1.3, "paper", 121.0)) for p in ("fracgpu", "fgd") for s in (1, 2)]
    fig = figure(results, Setting("paper", 1.3, (1, 2), nodes, 3, 8))
    (ax,) = fig.axes
    assert ax.get_title() == "trace tasks.csv, seeds 1-2 (median), paper protocol"
    assert "lower is better" in ax.get_ylabel() and "arrived" in ax.get_xlabel()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["fracgpu", "fgd"] and legend[-1].startswith("ideal")
    paper = figure([_run("default", "fgd", 42, 4.8)], PAPER)
    assert "FGD as published (10-seed mean)" in [t.get_text() for t in paper.axes[0].get_legend().get_texts()]


def test_plot_without_matplotlib_is_refused_before_the_runs(tiny_trace: tuple[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--plot", str(tmp_path / "x.png")]) == 2
    out, err = capsys.readouterr()
    assert err == ("fracgpu simulate: --plot needs matplotlib: pip install '.[plot]' in a clone of fracgpu "
                   "(or pip install matplotlib)\n")
    assert out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--trace", "/no/such.csv"], "no such file"),
        (["--trace", "nonsense"], "neither a CSV file nor a bundled pod list"),
    ],
)
def test_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["simulate", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seeds"), [("42", [42]), ("42-44", [42, 43, 44]), ("1,5-6", [1, 5, 6]),
                                             ("42,42", [42])])
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


# A number no real trace row has (past int64, infinite, more GPUs than a node has columns for) used to
# reach the ledger's int64 arrays and end the run with an OverflowError traceback.
HUGE_ROWS = [
    ("nodes", "cpu_milli", "1e30", "(at most 4503599627370496)"),
    ("nodes", "cpu_milli", "inf", "(at most 4503599627370496)"),
    ("nodes", "memory_mib", str(2**64), "(at most 4294967296)"),
    ("nodes", "gpu", str(10**30), "(at most 64)"),
    ("tasks", "cpu_milli", str(2**63), "(at most 4503599627370496)"),
    ("tasks", "memory_mib", "1e30", "(at most 4294967296)"),
    ("tasks", "num_gpu", str(2**64), "(at most 64)"),
]


@pytest.mark.parametrize(("which", "column", "value", "bound"), HUGE_ROWS,
                         ids=[f"{w} {c}={v}" for w, c, v, _ in HUGE_ROWS])
def test_a_trace_number_past_its_bound_is_a_one_line_error(tiny_trace: tuple[str, str], which: str, column: str,
                                                           value: str, bound: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    path = Path(nodes if which == "nodes" else tasks)
    header, first, *rest = path.read_text().splitlines()
    cells = first.split(",")
    cells[header.split(",").index(column)] = value
    path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    assert cli_main(["simulate", "--no-progress", "--nodes", nodes, "--trace", tasks]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path.name}:2: {column}={value!r} is out of range {bound}" in err[0], err
