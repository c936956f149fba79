"""A lint of the Containerfile in place of a build (no container engine runs in CI; hadolint is not
installable from the package registries here): pinned base, non-root final stage, nothing fetched
from URLs, an entrypoint that is the fracgpu CLI."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

import pytest

from fracgpu.cli import COMMANDS
from tests.manifests.render import ROOT, of_kind

CONTAINERFILE = ROOT / "Containerfile"
# an exact patch release with a variant (3.11.11-slim-bookworm), optionally with a digest
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+-[\w.-]+(@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Instruction:
    line: int
    op: str
    args: str


def instructions(text: str) -> list[Instruction]:
    out: list[Instruction] = []
    buffer, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if not buffer:
            start = n
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        op, _, args = buffer.partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
        buffer = ""
    return out


def parsed() -> list[Instruction]:
    return instructions(CONTAINERFILE.read_text())


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for i in parsed():
        if i.op == "FROM":
            result.append([])
        if result:
            result[-1].append(i)
    return result


def test_the_parser_reads_continuations() -> None:
    (i,) = instructions("# c\nRUN a \\\n && b\n")
    assert (i.line, i.op, i.args) == (2, "RUN", "a  && b")


def test_every_base_image_is_pinned() -> None:
    args = {}
    for i in parsed():
        if i.op == "ARG" and "=" in i.args:
            k, _, v = i.args.partition("=")
            args[k] = v
    aliases: set[str] = set()
    froms = [i for i in parsed() if i.op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the runtime image"
    for i in froms:
        words = i.args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
        if image not in aliases:
            assert PINNED.match(image), f"line {i.line}: {image} is not pinned to an exact release"
            assert ":latest" not in image
        if len(words) == 3 and words[1].upper() == "AS":
            aliases.add(words[2])


def test_the_runtime_stage_runs_as_a_non_root_user() -> None:
    users = [i for i in stages()[-1] if i.op == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}


def test_nothing_is_fetched_from_a_url_by_add() -> None:
    for i in parsed():
        assert i.op != "ADD", f"line {i.line}: use COPY (ADD fetches URLs and unpacks archives)"
        if i.op == "RUN":
            assert not re.search(r"\b(curl|wget)\b", i.args), f"line {i.line}: no downloads outside package managers"


def test_copies_name_files_of_this_repository() -> None:
    for i in parsed():
        if i.op == "COPY" and not i.args.startswith("--from"):
            *sources, _ = shlex.split(i.args)
            for s in sources:
                assert (ROOT / s).exists(), f"line {i.line}: {s} is not in the repository"


def test_the_entrypoint_is_the_cli_and_every_manifest_command_exists() -> None:
    (entry,) = [i for i in stages()[-1] if i.op == "ENTRYPOINT"]
    assert json.loads(entry.args) == ["fracgpu"]
    for w in of_kind("Deployment") + of_kind("DaemonSet"):
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("ghcr.io/fracgpu/fracgpu"):
                assert "command" not in c, "the image's entrypoint runs the CLI"
                assert c["args"][0] in COMMANDS


@pytest.mark.parametrize("op", ["FROM", "RUN", "COPY", "ENV", "USER", "ENTRYPOINT"])
def test_instructions_are_upper_case(op: str) -> None:
    text = CONTAINERFILE.read_text()
    for line in text.splitlines():
        word = line.strip().split(" ", 1)[0]
        if word.upper() == op:
            assert word == op


def test_the_containerfile_is_said_to_be_unbuilt_here() -> None:
    assert "Not built in fracgpu's own CI" in CONTAINERFILE.read_text()
    assert "not built" in (ROOT / "docs" / "install.md").read_text().lower()


