"""The configuration reference, docs/configuration.md, generated from the code.

Every command of `fracgpu.cli.COMMANDS` exposes its argparse parser through a `build_parser`
(or `parser`) function of its main module, taking the environment when its defaults read one.
This module walks each parser (flags, defaults, help), finds each flag's environment fallback by
building the parser again with one variable set and seeing which default moves, lists the
settings that are read from the environment only (the device plugin's health thresholds), the
config dataclasses the flags fill (fields, types, defaults, the comments in the source), and the
files some flags take (their format, from the docstring that defines it).

Regenerate with `python scripts/gen_config_reference.py`; `tests/test_config_reference.py` fails
when the committed file is stale.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fracgpu.configfile import REFERENCE_DOC, parser_factory
from fracgpu.startup import is_deprecated

DOC_PATH = REFERENCE_DOC
REGENERATE = "python scripts/gen_config_reference.py"

# Values tried, in order, to see which flag default an environment variable moves (numbers first,
# then what a boolean or an enum reads); enum values of the settings are tried too.
_PROBES = ("7", "1", "7777", "0.5", "true", "off", "x")


# ---- what is not in a parser: a small registry, checked by the tests -----------------------------
@dataclass(frozen=True, slots=True)
class EnvReader:
    """Settings a command reads from the environment only, through `read(environ)`."""

    title: str
    read: Callable[[Mapping[str, str]], object]
    doc: Callable[[], str]


@dataclass(frozen=True, slots=True)
class FileFormat:
    """A file a flag takes, with the docstring (or text) that defines its format."""

    flag: str
    title: str
    text: Callable[[], str]


def _settings(command: str) -> tuple[type[Any], ...]:
    """The config dataclasses a command builds from its flags and environment."""
    if command == "extender":
        from fracgpu.extender.scheduler import SchedulerConfig

        return (SchedulerConfig,)
    if command == "device-plugin":
        from fracgpu.deviceplugin.app import AppConfig

        return (AppConfig,)
    if command == "dra-driver":
        from fracgpu.draplugin.app import AppConfig as DraAppConfig

        return (DraAppConfig,)
    if command == "controller":
        from fracgpu.controller.config import ControllerConfig

        return (ControllerConfig,)
    if command == "webhook":
        from fracgpu.webhook.app import WebhookConfig

        return (WebhookConfig,)
    return ()


def _env_readers(command: str) -> tuple[EnvReader, ...]:
    if command in ("device-plugin", "dra-driver"):
        from fracgpu.core.health import HealthConfig

        return (EnvReader("GPU health (environment only)", HealthConfig.from_env,
                          lambda: inspect.getdoc(HealthConfig.from_env) or ""),)
    return ()


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

    doc = inspect.getdoc(recovery) or ""
    paragraphs = doc.split("\n\n")
    what = " ".join(paragraphs[0].split())
    how = " ".join(paragraphs[-1].split()) if len(paragraphs) > 1 else ""
    how = how.replace("Pure: validate the template once at start, build one Job per node from it, read Jobs back. ", "")
    rules = re.findall(r'TemplateError\(f?"recovery job: ([^"]*)"', inspect.getsource(recovery.validate_template))
    checks = "".join(f"\n- {re.sub(r'{[^}]*}', '...', r)}" for r in rules)
    return f"{what} A `batch/v1` Job manifest in YAML. {how}\n\nChecked at start (the message on failure):{checks}"


def _snapshot_file() -> str:
    from fracgpu.core.snapshot import KINDS
    from fracgpu.kube import snapshot

    return (f"{(inspect.getdoc(snapshot) or '').split(chr(10) + chr(10))[0]} Kinds: "
            f"{', '.join(f'`{k}`' for k in KINDS)}; any other kind is an error. Make one with "
            "`kubectl get nodes,pods,namespaces,tenantquotas -A -o yaml > snap.yaml`.")


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


# ---- the model of the reference -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FlagDoc:
    flags: tuple[str, ...]  # "--port", or the positional's name
    env: tuple[str, ...]  # environment variables that set the default
    default: str
    help: str


@dataclass(frozen=True, slots=True)
class SettingDoc:
    name: str  # dotted for nested dataclasses: quota.max_head_wait
    type: str
    default: str
    comment: str
    env: tuple[str, ...] = ()  # for environment-only settings


@dataclass(frozen=True, slots=True)
class CommandDoc:
    name: str
    module: str
    summary: str
    description: str
    flags: tuple[FlagDoc, ...]
    env_only: tuple[tuple[EnvReader, tuple[SettingDoc, ...]], ...]
    settings: tuple[tuple[str, tuple[SettingDoc, ...]], ...]
    files: tuple[FileFormat, ...]


class _Environ(Mapping[str, str]):
    """An environment that records which variables were looked up."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        if key not in self.asked:
            self.asked.append(key)
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags, without --help and without old names (`is_deprecated`: listed beside their new flag)."""
    return [a for a in p._actions if not isinstance(a, argparse._HelpAction) and not is_deprecated(a)]


def _old_names(p: argparse.ArgumentParser, dest: str) -> tuple[str, ...]:
    return tuple(o for a in p._actions if is_deprecated(a) and a.dest == dest for o in a.option_strings)


def _defaults(p: argparse.ArgumentParser) -> dict[str, Any]:
    return {a.dest: a.default for a in _actions(p)}


def env_fallbacks(build: Callable[[Mapping[str, str]], argparse.ArgumentParser]) -> dict[str, list[str]]:
    """dest -> the environment variables whose value becomes that flag's default."""
    probe = _Environ()
    base = _defaults(build(probe))
    found: dict[str, list[str]] = {}
    for key in probe.asked:
        for value in _PROBES:
            try:
                moved = _defaults(build(_Environ({key: value})))
            except (ValueError, TypeError, SystemExit):
                continue
            changed = [d for d, v in moved.items() if v != base.get(d)]
            if changed:
                for dest in changed:
                    found.setdefault(dest, []).append(key)
                break
    return found


def _show(value: Any) -> str:
    if value is None or value is argparse.SUPPRESS:
        return ""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, frozenset | set):
        return ",".join(str(v) for v in sorted(value)) or "(empty)"
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value) or "(empty)"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    return str(value)


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if text is argparse.SUPPRESS:
        return "(hidden)"
    if "%" in text:
        params = {**vars(action), "prog": prog}
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % params
    if action.choices is not None and "one of" not in text:
        text = (text + " " if text else "") + "(one of: " + ", ".join(str(c) for c in action.choices) + ")"
    return " ".join(text.split())


def flag_docs(build: Callable[[Mapping[str, str]], argparse.ArgumentParser]) -> tuple[FlagDoc, ...]:
    p = build(_Environ())
    envs = env_fallbacks(build)
    out = []
    for a in _actions(p):
        default = "false" if isinstance(a, argparse._StoreTrueAction) and a.default is False else _show(a.default)
        names = (*a.option_strings, *_old_names(p, a.dest)) or (a.dest,)
        # a flag from a `fracgpu.startup.Flag` table names its variables (current first); others are probed
        env = tuple(getattr(a, "env", ())) or tuple(envs.get(a.dest, ()))
        out.append(FlagDoc(tuple(names), env, default, _help(a, p.prog)))
    return tuple(out)


# ---- config dataclasses ---------------------------------------------------------------------------
_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=.*?)?(?:\s+#\s*(?P<comment>.*))?$")


def field_comments(cls: type[Any]) -> dict[str, str]:
    """name -> the comment on the field's line, or the comment lines right above it."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = _FIELD.match(line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            out[m.group(1)] = (m.group("comment") or " ".join(above)).strip()
        if stripped.startswith(("def ", "@")):
            break
        above = []
    return out


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    text = str(hint).replace("typing.", "")
    return re.sub(r"\b[\w.]+\.(\w+)", r"\1", text).replace("NoneType", "None")


def _dataclass_in(hint: Any) -> type[Any] | None:
    """The dataclass a field holds (also `X | None`), to list its fields under the field's name."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and isinstance(inner[0], type) and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def _show_setting(value: Any) -> str:
    if value is None:
        return "none"
    return _show(value) if value != "" else '""'


def setting_docs(cls: type[Any], prefix: str = "", when: str = "") -> tuple[SettingDoc, ...]:
    """The fields of a config dataclass, nested ones flattened (`quota.max_head_wait`)."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    out: list[SettingDoc] = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name, f.type)
        nested = _dataclass_in(hint)
        if nested is not None:
            optional = f.default is None
            out.extend(setting_docs(nested, f"{prefix}{f.name}.",
                                    f"only when `{prefix}{f.name}` is set (default: not set)" if optional else when))
            continue
        if f.default is not dataclasses.MISSING:
            default = _show_setting(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _show_setting(f.default_factory())
        else:
            default = "(required)"
        comment = "; ".join(c for c in (comments.get(f.name, ""), when) if c)
        out.append(SettingDoc(prefix + f.name, _type_name(hint), default, comment))
    return tuple(out)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out.update(_leaves(getattr(value, f.name), f"{prefix}{f.name}."))
        return out
    return {prefix.rstrip("."): value}


def _enum_values(value: Any) -> list[str]:
    return sorted({str(m.value) for v in _leaves(value).values() if isinstance(v, enum.Enum) for m in type(v)})


def env_setting_docs(reader: EnvReader) -> tuple[SettingDoc, ...]:
    """Each variable `reader.read` looks up, with the setting it moves (found by setting it)."""
    probe = _Environ()
    base_obj = reader.read(probe)
    base = _leaves(base_obj)
    cls = type(base_obj)
    flat = {s.name: s for s in setting_docs(cls)} if dataclasses.is_dataclass(cls) else {}
    out = []
    for key in probe.asked:
        moved: list[str] = []
        for value in (*_PROBES, *_enum_values(base_obj)):
            try:
                got = _leaves(reader.read(_Environ({key: value})))
            except (ValueError, TypeError):
                continue
            moved = [name for name, v in got.items() if v != base.get(name)]
            if moved:
                break
        names = [n for n in moved if n in flat] or moved
        first = flat.get(names[0]) if names else None
        out.append(SettingDoc(", ".join(names) or "(none)", first.type if first else "",
                              first.default if first else "", first.comment if first else "", env=(key,)))
    return tuple(out)


# ---- the document ---------------------------------------------------------------------------------
def commands() -> tuple[CommandDoc, ...]:
    from fracgpu.cli import COMMANDS

    out = []
    for name, (module, summary) in COMMANDS.items():
        build = parser_factory(module)
        p = build(_Environ())
        readers = _env_readers(name)
        out.append(CommandDoc(
            name=name, module=module, summary=summary, description=" ".join((p.description or "").split()),
            flags=flag_docs(build),
            env_only=tuple((r, env_setting_docs(r)) for r in readers),
            settings=tuple((cls.__name__, setting_docs(cls)) for cls in _settings(name)),
            files=_files(name),
        ))
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
        f"Generated from the code: regenerate with `{REGENERATE}` after changing a flag, an environment",
        f"variable or a config dataclass (`{REGENERATE} --check` only checks; `tests/test_config_reference.py`",
        "fails when this file is stale).",
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
        "their command; each command's settings object lists every setting with its type and default,",
        "including the ones no flag changes.",
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
        for reader, settings in d.env_only:
            lines += ["", f"### {reader.title}", "", _cell(" ".join(reader.doc().split())), "",
                      "| environment | setting | type | default | meaning |", "|---|---|---|---|---|"]
            for s in settings:
                lines.append(f"| {', '.join(_code(e) for e in s.env)} | {_code(s.name)} | {_cell(s.type)} | "
                             f"{_code(_cell(s.default))} | {_cell(s.comment)} |")
        for cls_name, settings in d.settings:
            lines += ["", f"### Settings object `{cls_name}`", "",
                      "What the flags above fill in; fields no flag sets keep their default.", "",
                      "| setting | type | default | meaning |", "|---|---|---|---|"]
            for s in settings:
                lines.append(f"| {_code(s.name)} | {_cell(s.type)} | {_code(_cell(s.default))} | {_cell(s.comment)} |")
        for ff in d.files:
            lines += ["", f"### File: `{ff.flag}` ({ff.title})", "", ff.text().strip()]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def stale(root: Path) -> bool:
    path = root / DOC_PATH
    return not path.is_file() or path.read_text(encoding="utf-8") != render()


def main(argv: Sequence[str], root: Path) -> int:
    check = "--check" in argv
    text = render()
    path = root / DOC_PATH
    if check:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            print(f"{DOC_PATH} is stale: run {REGENERATE}")
            return 1
        print(f"{DOC_PATH} is up to date")
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0
