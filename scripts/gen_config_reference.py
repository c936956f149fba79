#!/usr/bin/env python3
"""Write docs/configuration.md from the code: every command's flags, their environment variables and
defaults, and the files some flags take.

    python scripts/gen_config_reference.py          # regenerate
    python scripts/gen_config_reference.py --check  # exit 1 when the file is stale

Every command of `fracgpu.cli.COMMANDS` exposes its parser through `build_parser(environ)` (or `parser`)
in its main module. Flags declared in a `fracgpu.startup.Flag` table are documented from the table
(the parser keeps each one's `Flag` and variables on its action): names, old names, variables, default,
help. Files are described by the docstrings or declarations that define
their format. `tests/test_config_reference.py` fails when the committed file is stale.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fracgpu.configfile import REFERENCE_DOC, parser_factory  # noqa: E402
from fracgpu.startup import Flag, help_text, is_deprecated  # noqa: E402

DOC_PATH = REFERENCE_DOC
REGENERATE = "python scripts/gen_config_reference.py"


# ---- the files some flags take --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FileFormat:
    """A file a flag takes, with the text that defines its format."""

    flag: str
    title: str
    text: Callable[[], str]


def _literal_block(doc: str | None, marker: str) -> str:
    """The indented block after the line that ends with `marker` (an rST `::` block)."""
    lines = (doc or "").splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().endswith(marker):
            block = []
            for body in lines[i + 1:]:
                if body.strip() and not body.startswith((" ", "\t")):
                    break
                block.append(body)
            return textwrap.dedent("\n".join(block)).strip("\n")
    return ""


def _gpus_file() -> str:
    from fracgpu.deviceplugin.backends import simulated

    return "```yaml\n" + _literal_block(simulated.__doc__, "::") + "\n```"


def _recovery_job() -> str:
    from fracgpu.controller import recovery

    paragraphs = (inspect.getdoc(recovery) or "").split("\n\n")
    what, how = " ".join(paragraphs[0].split()), " ".join(paragraphs[-1].split())
    checks = "".join(f"\n- {re.sub(r'{[^}]*}', '...', c)}" for c in recovery.TEMPLATE_CHECKS)
    return f"{what} A `batch/v1` Job manifest in YAML. {how}\n\nChecked at start (the message on failure):{checks}"


def _snapshot_file() -> str:
    from fracgpu.core.records import KINDS
    from fracgpu.kube import snapshot

    return (f"{(inspect.getdoc(snapshot) or '').split(chr(10) + chr(10))[0]} Kinds: "
            f"{', '.join(f'`{k}`' for k in KINDS)}; any other kind is an error. Make one with "
            "`kubectl get nodes,pods,namespaces,tenantquotas -A -o yaml > snap.yaml` (DRA path: add "
            "`resourceslices,resourceclaims,resourceclaimtemplates`; docs/dra.md).")


def _files(command: str) -> tuple[FileFormat, ...]:
    snapshot = FileFormat("--snapshot", "cluster snapshot", _snapshot_file)
    return {
        "device-plugin": (FileFormat("--gpus", "simulated GPUs", _gpus_file),),
        "dra-driver": (FileFormat("--gpus", "simulated GPUs", _gpus_file),),
        "controller": (FileFormat("--recovery-job", "recovery Job template", _recovery_job),),
        "extender": (snapshot,),
        "simulate": (snapshot,),
        "inspect": (snapshot,),
    }.get(command, ())


# ---- the model of the reference -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FlagDoc:
    flags: tuple[str, ...]  # "--port" (with "-p", old names), or the positional's name
    env: tuple[str, ...]  # environment variables that set the default, the current one first
    default: str
    help: str


@dataclass(frozen=True, slots=True)
class CommandDoc:
    name: str
    module: str
    summary: str
    description: str
    flags: tuple[FlagDoc, ...]
    files: tuple[FileFormat, ...]


def _one_of(text: str, choices: Iterable[Any] | None) -> str:
    if choices is None or "one of" in text:
        return text
    return (text + " " if text else "") + "(one of: " + ", ".join(str(c) for c in choices) + ")"


def _from_table(flag: Flag, env: tuple[str, ...], names: Sequence[str]) -> FlagDoc:
    default = "false" if flag.switch else (flag.default or "")
    return FlagDoc((*names, *(f"--{o}" for o in flag.old)), env, default,
                   " ".join(_one_of(help_text(flag, env), flag.choices).split()))


def flag_docs(p: argparse.ArgumentParser) -> tuple[FlagDoc, ...]:
    """Every flag of the parser, old names beside the current one (the parser is built with no environment)."""
    out = []
    for a in p._actions:
        if isinstance(a, argparse._HelpAction) or is_deprecated(a):
            continue
        flag: Flag | None = getattr(a, "flag", None)
        if flag is None:
            raise SystemExit(f"{p.prog}: {'/'.join(a.option_strings) or a.dest} is not declared in a "
                             "fracgpu.startup.Flag table; declare it there so that it is documented")
        out.append(_from_table(flag, a.env, a.option_strings))  # type: ignore[attr-defined]
    return tuple(out)


# ---- the document ---------------------------------------------------------------------------------
def commands() -> tuple[CommandDoc, ...]:
    from fracgpu.cli import COMMANDS

    out = []
    for name, (module, summary) in COMMANDS.items():
        p = parser_factory(module)({})
        out.append(CommandDoc(name=name, module=module, summary=summary,
                              description=" ".join((p.description or "").split()), flags=flag_docs(p),
                              files=_files(name)))
    return tuple(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if text else ""


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def render(docs: Sequence[CommandDoc] | None = None) -> str:
    docs = commands() if docs is None else docs
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from the code by `{REGENERATE}`; do not edit by hand. -->",
        f"Generated from the code: regenerate with `{REGENERATE}` after changing a flag or an environment",
        f"variable (`{REGENERATE} --check` only checks; `tests/test_config_reference.py` fails when this",
        "file is stale).",
        "",
        "Every program is one command of `fracgpu <command>`, configured by flags, environment variables and",
        "an optional YAML file. Values are validated at start: a bad one stops the program with a message",
        "that names it.",
        "",
        "**The config file** (`fracgpu <command> --config FILE`, or `$FRACGPU_CONFIG`): one section per",
        "command, keyed by the command's name; a section's keys are that command's long flags below without",
        "the dashes (switches take `true`/`false`, repeatable flags a list), so one ConfigMap can serve every",
        "component. Unknown sections or keys are refused with the allowed names (`fracgpu/configfile.py`):",
        "",
        "```yaml",
        "extender:",
        "  policies: fracgpu",
        "  k: 1",
        "controller:",
        "  max-evictions-per-node: 2",
        "```",
        "",
        "Precedence everywhere: command-line flag, then the config file, then the environment variable named",
        "beside the flag, then the default.",
        "Files that some flags take (simulated GPUs, a recovery Job, a cluster snapshot) are described under",
        "their command.",
        "",
        "Programs that talk to the API server (`extender`, `controller`, `device-plugin`, `inspect`) find it",
        "the usual way: an explicit server/`--kubeconfig`/`--context` where the command has them, the",
        "in-cluster service account inside a pod, else `$KUBECONFIG` or `~/.kube/config`",
        "(`inspect` follows kubectl: `$KUBECONFIG`, then `~/.kube/config`, then in-cluster).",
        "",
        "Commands: " + ", ".join(f"[`{d.name}`](#fracgpu-{d.name})" for d in docs),
        "",
    ]
    for d in docs:
        lines += [f"## fracgpu {d.name}", "", d.description or f"{d.summary}.", "",
                  f"Flags (`{d.module}`):", "",
                  "| flag | environment | default | description |", "|---|---|---|---|"]
        for f in d.flags:
            lines.append(f"| {', '.join(_code(x) for x in f.flags)} | {', '.join(_code(e) for e in f.env)} | "
                         f"{_code(_cell(f.default))} | {_cell(f.help)} |")
        for ff in d.files:
            lines += ["", f"### File: `{ff.flag}` ({ff.title})", "", ff.text().strip()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: Sequence[str], root: Path = ROOT) -> int:
    text = render()
    path = root / DOC_PATH
    if "--check" in argv:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{DOC_PATH} is stale: run {REGENERATE}")
            return 1
        print(f"{DOC_PATH} is up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
