"""`fracgpu simulate` end to end on a tiny trace: outputs, options, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fracgpu.cli import main as cli_main
from fracgpu.sim.main import parse_seeds

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
    assert "unalloc %" in out and "fgd" in out and "fracgpu" in out
    assert "run 2/2" in err  # the progress bar


def test_json_and_csv(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    args = ["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "all", "--seeds", "1-2",
            "--no-progress", "-j", "1"]
    assert cli_main([*args, "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["runs"]) == 7 * 2
    assert {r["policy"] for r in doc["summary"]} == {"random", "dot-product", "clustering", "packing", "best-fit",
                                                      "fgd", "fracgpu"}
    for r in doc["summary"]:
        assert 0 <= r["unallocated_pct"] <= 100
        assert r["published_unallocated_pct"] is None  # a user trace has no published figures
    assert cli_main([*args, "--policy", "best-fit", "-o", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("trace,policy,seeds,unallocated_pct") and len(lines) == 2


def test_cluster_protocol(tiny_trace: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    nodes, tasks = tiny_trace
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--protocol", "cluster", "--no-progress"]) == 0
    assert "cluster protocol" in capsys.readouterr().out


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_valid_png(tiny_trace: tuple[str, str], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--plot (matplotlib: the `plot` extra, also in `test`) draws Fig. 9a for two policies over two seeds."""
    from PIL import Image

    nodes, tasks = tiny_trace
    png = tmp_path / "fig9a.png"
    assert cli_main(["simulate", "--nodes", nodes, "--trace", tasks, "--policy", "fgd,fracgpu", "--seeds", "1-2",
                     "--no-progress", "-j", "1", "--plot", str(png)]) == 0
    assert "needs matplotlib" not in capsys.readouterr().err
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as img:
        img.verify()  # a complete, uncorrupted PNG
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (700, 450)  # figsize 7 x 4.5 in at 100 dpi


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--trace", "/no/such.csv"], "no such file"),
        (["--trace", "nonsense"], "neither a CSV file nor a bundled pod list"),
        (["--inflation", "0"], "--inflation must be positive"),
    ],
)
def test_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["simulate", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("text", "seeds"), [("42", [42]), ("42-44", [42, 43, 44]), ("1,5-6", [1, 5, 6])])
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
