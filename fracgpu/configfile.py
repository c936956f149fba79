"""`fracgpu <command> --config FILE`: one YAML file for every program, checked before anything starts.

The file has one section per command, keyed by the command's name; a section's keys are the
command's long flags without the leading dashes, so the file and `--help` never disagree:

    extender:
      policies: fracgpu
      k: 1
      tls-cert: /etc/fracgpu/tls/tls.crt
    device-plugin:
      quota-check: true

One ConfigMap can thus serve every component. Precedence, strongest first: flags on the command
line, the file, environment variables, built-in defaults (the file is what an operator wrote for
this deployment; the environment is ambient). The file may also come from `$FRACGPU_CONFIG`.

Values go through the command's own parser (the file becomes flags placed before the command
line's), so a bad value gets the same message as the flag would; unknown sections or keys, and
values of the wrong shape, are refused with the file, the key and what is allowed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

CONFIG_FLAG = "--config"
CONFIG_ENV = "FRACGPU_CONFIG"


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file and the key."""


def split_config_flag(args: Sequence[str], environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """The config file's path (`--config FILE`, `--config=FILE`, else `$FRACGPU_CONFIG`) and the other args."""
    path: str | None = environ.get(CONFIG_ENV) or None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == CONFIG_FLAG:
            if i + 1 >= len(args):
                raise ConfigFileError(f"{CONFIG_FLAG} needs a file")
            path = args[i + 1]
            i += 1
        elif arg.startswith(CONFIG_FLAG + "="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if path == "":
        raise ConfigFileError(f"{CONFIG_FLAG} needs a file")
    return path, rest


def read_section(path: str, command: str, commands: Sequence[str]) -> Mapping[str, object]:
    """The command's section of the file ({} when the file has none for it)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(f"config {path}: cannot read it: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigFileError(f"config {path}: not YAML: {' '.join(str(e).split())}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigFileError(f"config {path}: must be a mapping of command name to its settings, "
                              f"got {type(doc).__name__}")
    unknown = sorted(str(k) for k in doc if k not in commands)
    if unknown:
        raise ConfigFileError(f"config {path}: unknown section {unknown[0]!r} (sections: {', '.join(commands)})")
    section = doc.get(command)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigFileError(f"config {path}: section {command!r} must be a mapping of flag name to value, "
                              f"got {type(section).__name__}")
    return {str(k): v for k, v in section.items()}


def _scalar(path: str, command: str, key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ConfigFileError(f"config {path}: {command}.{key} must be a string, number or boolean, "
                          f"got {type(value).__name__}")


def to_args(section: Mapping[str, object], parser: argparse.ArgumentParser, path: str, command: str) -> list[str]:
    """The section as the command line flags it stands for."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                actions[opt[2:]] = action
    out: list[str] = []
    for key, value in section.items():
        found = actions.get(key)
        if found is None:
            raise ConfigFileError(f"config {path}: {command} has no setting {key!r} "
                                  f"(settings: {', '.join(sorted(actions))})")
        action = found
        flag = "--" + key
        if action.nargs == 0:  # a switch such as store_true
            if not isinstance(value, bool):
                raise ConfigFileError(f"config {path}: {command}.{key} is a switch: true or false")
            if value == (action.const is not False):
                out.append(flag)
            continue
        values = value if isinstance(value, list) else [value]
        if len(values) != 1 and not isinstance(action, argparse._AppendAction) and action.nargs in (None, "?"):
            raise ConfigFileError(f"config {path}: {command}.{key} takes one value, got a list")
        if isinstance(action, argparse._AppendAction):
            for v in values:
                out += [flag, _scalar(path, command, key, v)]
        else:
            out.append(flag)
            out += [_scalar(path, command, key, v) for v in values]
    return out


def apply(command: str, args: Sequence[str], environ: Mapping[str, str], commands: Sequence[str],
          build_parser: Callable[[Mapping[str, str]], argparse.ArgumentParser]) -> list[str]:
    """The command's arguments with its config file's settings placed before them (so flags win)."""
    path, rest = split_config_flag(args, environ)
    if path is None:
        return rest
    return to_args(read_section(path, command, commands), build_parser(environ), path, command) + rest
