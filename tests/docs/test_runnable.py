"""The docs' commands work when followed literally.

A shell block of README.md or docs/*.md preceded by an HTML comment

    <!-- runnable -->                          the block runs to the end and exits 0
    <!-- runnable until="TEXT" -->             a server: it runs until TEXT appears in its output,
                                               then Ctrl-C (SIGINT) must stop it cleanly (exit 0)

is run here as written: `bash -e -o pipefail`, in a fresh directory holding copies of the
repository's `examples/` and `manifests/` (the docs' commands run from a clone's root), with
`fracgpu` and `python3` on PATH meaning this worktree's code and interpreter, and no cluster
(no kubeconfig, not in a pod). Nothing it prints may be a traceback. Mark only blocks that need no
cluster, no GPU, no network and finish in seconds; a block whose first program is not installed
here (e.g. kubectl) is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fracgpu.extender.main import build_parser
from fracgpu.startup import is_deprecated

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r'^<!--\s*runnable(?:\s+until="(?P<until>[^"]+)")?\s*-->\s*$')
FENCE = re.compile(r"^```(?:sh|bash|shell)?\s*$")
RUN_LIMIT_S = 60.0  # bounds, not expectations: the slowest block (a short simulate) takes a few seconds
SERVE_LIMIT_S = 30.0
STOP_LIMIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Block:
    doc: str
    line: int
    script: str
    until: str | None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def marked_blocks() -> list[Block]:
    """Every marked block; a marker not followed by a shell fence is an error, not a silent skip."""
    out: list[Block] = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = MARK.match(line)
            if not m:
                continue
            doc = str(path.relative_to(ROOT))
            start = i + 1
            if start >= len(lines) or not FENCE.match(lines[start]):
                raise AssertionError(f"{doc}:{i + 1}: a runnable marker must sit right above a ```sh block")
            end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise AssertionError(f"{doc}:{start + 1}: the block is not closed")
            out.append(Block(doc, start + 1, "\n".join(lines[start + 1:end]) + "\n", m.group("until")))
    return out


BLOCKS = marked_blocks()


def test_the_docs_mark_their_runnable_commands() -> None:
    docs = {b.doc for b in BLOCKS}
    assert {"README.md", "docs/deviceplugin.md", "docs/install.md"} <= docs, docs
    assert any(b.until for b in BLOCKS)


def first_programs(script: str) -> set[str]:
    """The programs a script starts (first word of each command, continuations joined)."""
    joined = script.replace("\\\n", " ")
    words = set()
    for line in joined.splitlines():
        for part in re.split(r"&&|\|\||\||;", line.split("#", 1)[0]):
            tokens = shlex.split(part) if part.strip() else []
            if tokens:
                words.add(tokens[0])
    return words


@pytest.fixture
def clone() -> Iterator[Path]:
    """A short-named scratch directory laid out like a clone's root (unix socket paths stay short)."""
    d = Path(tempfile.mkdtemp(prefix="fgdoc-", dir="/tmp"))
    try:
        for name in ("examples", "manifests"):
            shutil.copytree(ROOT / name, d / name)
        bin_dir = d / ".bin"
        bin_dir.mkdir()
        for name, target in (("fracgpu", f'exec "{sys.executable}" -m fracgpu.cli "$@"'),
                             ("python3", f'exec "{sys.executable}" "$@"')):
            shim = bin_dir / name
            shim.write_text(f"#!/bin/sh\n{target}\n")
            shim.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def environ(clone: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("FRACGPU_", "KUBERNETES_")) and k not in ("KUBECONFIG", "NODE_NAME", "PYTHONPATH")}
    return {**keep, "HOME": str(clone), "PATH": f"{clone / '.bin'}{os.pathsep}{keep.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            # a demo's /metrics port (9402) may be taken on a shared test machine; off here
            "FRACGPU_METRICS_PORT": "0"}


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return text in path.read_text(errors="replace")
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_the_documented_command_runs_as_written(block: Block, clone: Path) -> None:
    missing = sorted(p for p in first_programs(block.script) if shutil.which(p, path=environ(clone)["PATH"]) is None
                     and p not in ("mkdir", "cd", "grep", "export"))
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)}")
    log = clone / ".output"
    with log.open("wb") as out:
        proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.script], cwd=clone, env=environ(clone),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if block.until is not None:
                seen = wait_for(log, block.until, proc, SERVE_LIMIT_S)
                assert seen, f"{block.id}: {block.until!r} never appeared:\n{log.read_text(errors='replace')}"
                os.killpg(proc.pid, signal.SIGINT)
                rc = proc.wait(STOP_LIMIT_S)
            else:
                rc = proc.wait(RUN_LIMIT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, f"{block.id}:\n{output}"
    assert rc == 0, f"{block.id}: exit {rc}\n{output}"


def test_the_extender_synopsis_shows_the_defaults() -> None:
    """docs/extender.md's synopsis: `[--flag VALUE]` is the flag's default (UPPERCASE is a placeholder)."""
    text = (ROOT / "docs" / "extender.md").read_text(encoding="utf-8")
    synopsis = text.split("## Running", 1)[1].split("```", 2)[1]
    p = build_parser({})
    actions = {o: a for a in p._actions for o in a.option_strings}
    shown = re.findall(r"\[(--[a-z-]+) ([^\]\s]+)", synopsis)
    assert len(shown) >= 20, shown
    for flag, value in shown:
        action = actions.get(flag)
        assert action is not None and not is_deprecated(action), f"{flag} is not a current flag"
        if str(action.default) == value:
            continue
        assert value.rstrip(",.").isupper(), (flag, value, action.default)  # a placeholder, then
        assert action.default in (None, ""), (flag, action.default)
