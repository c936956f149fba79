"""`fracgpu <command> --help` teaches: every flag says what it does and its default, `--config` is offered
everywhere, one idea has one name across commands, and the old names still work for a release, with a
one-line warning, on the command line, in the environment and in a config file."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from fracgpu.cli import COMMANDS
from fracgpu.configfile import apply, parser_factory
from fracgpu.startup import is_deprecated
from tests.test_config_reference import Recording


def build(command: str, environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    return parser_factory(COMMANDS[command][0])({} if environ is None else environ)


def rendered_help(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    return p._get_formatter()._expand_help(action)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_says_what_it_does_and_its_default(command: str) -> None:
    p = build(command)
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or is_deprecated(action):
            continue
        assert action.help and action.help is not argparse.SUPPRESS, (command, action.option_strings)
        text = rendered_help(p, action)
        assert re.search(r"\bdefault\b", text, re.IGNORECASE), (command, action.option_strings, text)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_config_is_offered_by_every_command(command: str) -> None:
    assert re.search(r"^  --config FILE +YAML file", build(command).format_help(), re.MULTILINE)


# One idea, one name: (current name, its old names). Whichever command has the idea uses the current name.
NAMES = [
    ("--bind-address", ("--listen",)),
    ("--tls-cert", ("--cert-file",)),
    ("--tls-key", ("--key-file",)),
    ("--max-body-bytes", ("--body-limit",)),
    ("--kube-api", ("--kube-host",)),
    ("--cert-reload", ("--cert-reload-seconds",)),
    ("--heartbeat-stale", ("--heartbeat-grace",)),
]


@pytest.mark.parametrize(("current", "old"), NAMES, ids=[n for n, _ in NAMES])
def test_one_idea_has_one_name(current: str, old: tuple[str, ...]) -> None:
    for command in COMMANDS:
        p = build(command)
        by_option = {o: a for a in p._actions for o in a.option_strings}
        for name in old:
            alias = by_option.get(name)
            if alias is None:
                continue
            assert is_deprecated(alias), (command, name)  # hidden, and named in the current flag's help
            assert current in by_option and by_option[current].dest == alias.dest, (command, name)
            assert f"was {name}, deprecated" in (by_option[current].help or ""), (command, name)
            assert name not in p.format_usage()


# (command, how the old name is given, the setting, its value, the warning)
OLD_NAMES = [
    ("extender", ["--listen", "127.0.0.1"], {}, "bind_address", "127.0.0.1",
     "fracgpu extender: --listen is deprecated, use --bind-address"),
    ("extender", ["--body-limit", "1024"], {}, "max_body_bytes", 1024,
     "fracgpu extender: --body-limit is deprecated, use --max-body-bytes"),
    ("extender", [], {"FRACGPU_EXTENDER_LISTEN": "127.0.0.2"}, "bind_address", "127.0.0.2",
     "environment variable FRACGPU_EXTENDER_LISTEN is deprecated, use FRACGPU_EXTENDER_BIND_ADDRESS"),
    ("extender", [], {"FRACGPU_EXTENDER_BODY_LIMIT": "2048"}, "max_body_bytes", 2048,
     "environment variable FRACGPU_EXTENDER_BODY_LIMIT is deprecated, use FRACGPU_EXTENDER_MAX_BODY_BYTES"),
    ("webhook", ["--cert-file", "/c.crt"], {}, "tls_cert", "/c.crt",
     "fracgpu webhook: --cert-file is deprecated, use --tls-cert"),
    ("webhook", ["--key-file", "/c.key"], {}, "tls_key", "/c.key",
     "fracgpu webhook: --key-file is deprecated, use --tls-key"),
    ("webhook", ["--cert-reload-seconds", "5"], {}, "cert_reload", 5.0,
     "fracgpu webhook: --cert-reload-seconds is deprecated, use --cert-reload"),
    ("webhook", [], {"FRACGPU_WEBHOOK_CERT_FILE": "/e.crt"}, "tls_cert", "/e.crt",
     "environment variable FRACGPU_WEBHOOK_CERT_FILE is deprecated, use FRACGPU_WEBHOOK_TLS_CERT"),
    ("webhook", [], {"FRACGPU_WEBHOOK_CERT_RELOAD_SECONDS": "7"}, "cert_reload", 7.0,
     "environment variable FRACGPU_WEBHOOK_CERT_RELOAD_SECONDS is deprecated, use FRACGPU_WEBHOOK_CERT_RELOAD"),
    ("device-plugin", ["--kube-host", "https://10.0.0.1:6443"], {}, "kube_api", "https://10.0.0.1:6443",
     "fracgpu device-plugin: --kube-host is deprecated, use --kube-api"),
    ("device-plugin", [], {"FRACGPU_KUBE_HOST": "https://10.0.0.2:6443"}, "kube_api", "https://10.0.0.2:6443",
     "environment variable FRACGPU_KUBE_HOST is deprecated, use FRACGPU_KUBE_API"),
    ("controller", ["--heartbeat-grace", "30"], {}, "heartbeat_stale", 30.0,
     "fracgpu controller: --heartbeat-grace is deprecated, use --heartbeat-stale"),
    ("controller", [], {"FRACGPU_HEARTBEAT_GRACE": "31"}, "heartbeat_stale", 31.0,
     "environment variable FRACGPU_HEARTBEAT_GRACE is deprecated, use FRACGPU_HEARTBEAT_STALE"),
    ("dra-driver", ["--kube-host", "https://10.0.0.1:6443"], {}, "kube_api", "https://10.0.0.1:6443",
     "fracgpu dra-driver: --kube-host is deprecated, use --kube-api"),
    ("dra-driver", [], {"FRACGPU_KUBE_HOST": "https://10.0.0.2:6443"}, "kube_api", "https://10.0.0.2:6443",
     "environment variable FRACGPU_KUBE_HOST is deprecated, use FRACGPU_KUBE_API"),
]


@pytest.mark.parametrize(("command", "argv", "environ", "dest", "value", "warning"), OLD_NAMES)
def test_old_names_still_work_and_say_so_in_one_line(command: str, argv: list[str], environ: dict[str, str],
                                                     dest: str, value: object, warning: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ns = build(command, environ).parse_args(argv)
    assert getattr(ns, dest) == value
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and warning in err[0] and "removed in the next release" in err[0]


@pytest.mark.parametrize(("command", "argv", "environ", "dest", "value", "warning"),
                         [row for row in OLD_NAMES if row[1]])
def test_old_names_are_config_file_keys_too(tmp_path: Path, command: str, argv: list[str], environ: dict[str, str],
                                            dest: str, value: object, warning: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "fracgpu.yaml"
    path.write_text(f"{command}:\n  {argv[0][2:]}: '{argv[1]}'\n")
    module = COMMANDS[command][0]
    args = apply(command, ["--config", str(path)], {}, list(COMMANDS), parser_factory(module))
    assert getattr(build(command).parse_args(args), dest) == value
    assert warning in capsys.readouterr().err
    current = next(n for n, old in NAMES if argv[0] in old)
    path.write_text(f"{command}:\n  {current[2:]}: '{argv[1]}'\n")
    args = apply(command, ["--config", str(path)], {}, list(COMMANDS), parser_factory(module))
    assert getattr(build(command).parse_args(args), dest) == value
    assert capsys.readouterr().err == ""


def test_the_current_environment_name_wins_over_the_old_one(capsys: pytest.CaptureFixture[str]) -> None:
    ns = build("extender", {"FRACGPU_EXTENDER_BIND_ADDRESS": "127.0.0.1", "FRACGPU_EXTENDER_LISTEN": "10.0.0.1"})
    assert ns.parse_args([]).bind_address == "127.0.0.1"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_bad_environment_value_is_a_one_line_refusal_naming_it(command: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every variable a parser reads, set to something no flag takes: the parser is still built (no int()
    while building it), and parsing either accepts the text or refuses it in one line naming the variable."""
    environ = Recording()
    build(command, environ)
    for var in sorted(environ.asked):
        p = build(command, {var: "bad value"})
        try:
            p.parse_args([])
        except SystemExit as e:
            assert e.code == 2
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and f"{var}='bad value' (environment)" in err[0], (var, err)
        capsys.readouterr()


def test_every_old_name_is_in_the_upgrade_notes() -> None:
    notes = (Path(__file__).resolve().parents[1] / "docs" / "upgrade.md").read_text(encoding="utf-8")
    rows = [line for line in notes.splitlines() if line.startswith("| ")]
    found = 0
    for command in COMMANDS:
        for alias in build(command)._actions:
            if is_deprecated(alias):
                new = alias.deprecated_for  # type: ignore[attr-defined]
                assert any(f"| {command} | `{alias.option_strings[0]}`" in r and f"`{new}`" in r for r in rows), (
                    command, alias.option_strings)
                found += 1
    assert found == 8
