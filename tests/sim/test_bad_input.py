"""`fracgpu simulate` and `fracgpu inspect` on a user's mistakes: one line naming the problem, exit 2.

Never a traceback, never a silent wrong answer (a row of "-", a figure taken below 100 % arrived,
a run that never ends), and a bad `--plot` path is refused before the runs, not after them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fracgpu.cli import main as cli_main

NODES = "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,2,T4\nn1,32000,131072,2,T4\n"
HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
TASKS = HEADER + "t0,4000,8192,1,500\nt1,4000,8192,1,250\n"
# PNG magic, then bytes that are not UTF-8: what a picture or binary given by mistake looks like
BINARY = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xd0\xff\xfe" * 8


@pytest.fixture
def mistakes(tmp_path: Path) -> Path:
    """A directory of the files a user gets wrong: empty, header-only, headerless, binary, CPU-only, too small."""
    files = {
        "nodes.csv": NODES,
        "tasks.csv": TASKS,
        "empty.csv": "",
        "header.csv": HEADER,
        "oneline.csv": "t0,4000,8192,1,500\n",  # a data line and no header
        "cpuonly.csv": HEADER + "t0,4000,8192,0,0\n",
        # 2-GPU tasks on a 4-GPU cluster: the inflated sequence stops below 100 % arrived for some seeds
        "small.csv": HEADER + "t0,4000,8192,1,500\nt1,4000,8192,1,250\nt2,4000,8192,2,1000\n",
        "inf.csv": HEADER + "t0,4000,8192,1,inf\n",
        "negative.csv": HEADER + "t0,-4000,8192,1,500\n",
        "nodes-header.csv": "sn,cpu_milli,memory_mib,gpu,model\n",
        "nodes-nogpu.csv": "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,131072,0,\n",
        "nan-inflation.yaml": "simulate:\n  inflation: nan\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.csv").write_bytes(BINARY)
    (tmp_path / "picture").write_bytes(BINARY)
    (tmp_path / "adir").mkdir()
    return tmp_path


# The command line on the small good inputs; a case's own flags come after, and argparse keeps the last.
SIM = ["simulate", "--nodes", "{d}/nodes.csv", "--trace", "{d}/tasks.csv"]

# (case, argv, environment, the line's text); "{d}" is the mistakes directory
CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    # -- nothing to measure: these gave exit 0 and a row of "-" (or a figure below 100 % arrived)
    ("empty csv", [*SIM, "--trace", "{d}/empty.csv"], {},
     "empty.csv: not an openb pod list: it is empty; the first line must be a header with the columns "
     "cpu_milli,memory_mib,num_gpu,gpu_milli"),
    ("header-only csv", [*SIM, "--trace", "{d}/header.csv"], {},
     "header.csv: no tasks, only a header line"),
    ("one line, no header", [*SIM, "--trace", "{d}/oneline.csv"], {},
     "oneline.csv: not an openb pod list: its first line is 't0,4000,8192,1,500'; the first line must be a header"),
    ("no GPU task", [*SIM, "--trace", "{d}/cpuonly.csv"], {},
     "cpuonly.csv: no task asks for a GPU (num_gpu and gpu_milli), so there is no GPU allocation to measure"),
    ("never reaches 100 %", [*SIM, "--trace", "{d}/small.csv", "--seeds", "1"], {},
     "small.csv at --inflation 1.3 (seed 1) asks for only 93.8 % of the 4 GPUs"),
    ("node list without nodes", [*SIM, "--nodes", "{d}/nodes-header.csv"], {},
     "nodes-header.csv: no nodes, only a header line"),
    ("node list without GPUs", [*SIM, "--nodes", "{d}/nodes-nogpu.csv"], {},
     "nodes-nogpu.csv: no node has a GPU (column gpu), so there is nothing to allocate"),
    ("a value of inf", [*SIM, "--trace", "{d}/inf.csv"], {}, "inf.csv:2: gpu_milli='inf' is out of range (at most 4503599627370496)"),
    ("a negative value", [*SIM, "--trace", "{d}/negative.csv"], {},
     "negative.csv:2: cpu_milli='-4000' is negative"),
    # -- flag values out of range: nan was taken, inf and 1e9 hung building the sequence, -j 0 ran
    *[(f"--inflation {v}", [*SIM, "--inflation", v], {},
       f"--inflation {shown}: must be a number from 1 to 10 (the workload replayed, as a multiple of the "
       "cluster's GPU capacity; the report is taken at 100 % arrived)")
      for v, shown in (("nan", "nan"), ("inf", "inf"), ("1e9", "1e+09"), ("0.5", "0.5"), ("0", "0"))],
    *[(f"-j {v}", [*SIM, "-j", v], {},
       f"-j {v}: must be at least 1 (parallel runs; leave it out for one per CPU)") for v in ("0", "-3")],
    # -- files that are not CSV text: these were tracebacks
    ("binary --trace", [*SIM, "--trace", "{d}/binary.csv"], {},
     "binary.csv: not a text CSV file (byte 0x89 at offset 0 is not UTF-8)"),
    ("binary --trace, no suffix", [*SIM, "--trace", "{d}/picture"], {},
     "picture: not a text CSV file (byte 0x89 at offset 0 is not UTF-8)"),
    ("directory --trace", [*SIM, "--trace", "{d}/adir"], {}, "adir: is a directory, not a CSV file"),
    ("directory --nodes", [*SIM, "--nodes", "{d}/adir"], {}, "adir: is a directory, not a CSV file"),
    ("device --trace", [*SIM, "--trace", "/dev/null"], {},
     "/dev/null: not a regular file; give a CSV file"),
    # -- --plot: refused before the runs (they took 50 s before the traceback); the bundled trace, to be sure
    ("--plot in a missing directory", ["simulate", "--plot", "{d}/no/dir/x.png"], {},
     "--plot {d}/no/dir/x.png: the directory {d}/no/dir does not exist; create it (mkdir -p {d}/no/dir) "
     "or give another path"),
    ("--plot a directory", ["simulate", "--plot", "{d}/adir"], {},
     "--plot {d}/adir: is a directory; give a file such as {d}/adir/simulate.png"),
    ("--plot not a picture", ["simulate", "--plot", "{d}/x.txt"], {},
     "--plot {d}/x.txt: give a file name ending in .png, .svg, .pdf"),
    # -- the environment
    ("binary $FRACGPU_CONFIG", SIM, {"FRACGPU_CONFIG": "{d}/picture"},
     "config {d}/picture: not a text file (byte 0x89 at offset 0 is not UTF-8)"),
    ("nan from the config file", SIM, {"FRACGPU_CONFIG": "{d}/nan-inflation.yaml"},
     "--inflation nan: must be a number from 1 to 10"),
    # -- inspect
    ("inspect: binary snapshot", ["inspect", "--snapshot", "{d}/picture"], {},
     "snapshot {d}/picture: 'utf-8' codec can't decode byte 0x89 in position 0"),
    ("inspect: directory snapshot", ["inspect", "--snapshot", "{d}/adir"], {},
     "snapshot {d}/adir: [Errno 21] Is a directory"),
    ("inspect: --heartbeat-stale nan", ["inspect", "--snapshot", "{d}/adir", "--heartbeat-stale", "nan"],
     {}, "--heartbeat-stale nan: must be a number of seconds >= 0 (0: do not judge heartbeats)"),
    ("inspect: --request-timeout inf", ["inspect", "--request-timeout", "inf"], {},
     "--request-timeout inf: must be a number of seconds > 0"),
    ("inspect: binary $FRACGPU_CONFIG", ["inspect"], {"FRACGPU_CONFIG": "{d}/picture"},
     "config {d}/picture: not a text file (byte 0x89 at offset 0 is not UTF-8)"),
    ("inspect: $KUBECONFIG a directory", ["inspect"], {"KUBECONFIG": "{d}/adir"},
     "no usable cluster configuration (kubeconfig {d}/adir"),
]


@pytest.mark.parametrize(("argv", "env", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line_naming_the_value(argv: list[str], env: dict[str, str], message: str, mistakes: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(d=mistakes))
    code = cli_main([a.format(d=mistakes) for a in argv])
    out, err = capsys.readouterr()
    command = argv[0]
    assert code == 2, err
    assert err.startswith(f"fracgpu {command}: ") and "Traceback" not in err
    assert message.format(d=mistakes) in err.splitlines()[0]
    assert out == ""
    lines = err.splitlines()  # one line; inspect's no-cluster message adds the ways to give one on a second
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  give --kubeconfig"))
    assert "at a time" not in err  # refused before "... N runs, M at a time": nothing was replayed


@pytest.mark.parametrize(("argv", "env"), [(["simulate", "--trace", "{d}/binary.csv"], {}),
                                            (["inspect"], {"FRACGPU_CONFIG": "{d}/picture"})], ids=["simulate", "inspect"])
def test_the_real_command_prints_no_traceback(argv: list[str], env: dict[str, str], mistakes: Path) -> None:
    """The installed entry point (`python -m fracgpu.cli`), its real stderr and exit status."""
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(mistakes), **{k: v.format(d=mistakes) for k, v in env.items()}}
    proc = subprocess.run([sys.executable, "-m", "fracgpu.cli", *(a.format(d=mistakes) for a in argv)],
                          capture_output=True, text=True, env=environ, timeout=30, cwd=Path(__file__).parents[2],
                          check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "not a text" in proc.stderr
