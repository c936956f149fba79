"""docs/configuration.md is generated from the code (fracgpu/configref.py) and must not go stale."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from fracgpu import configref
from fracgpu.cli import COMMANDS
from fracgpu.configfile import parser_factory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reference() -> tuple[configref.CommandDoc, ...]:
    return configref.commands()


def test_configuration_md_is_up_to_date(reference: tuple[configref.CommandDoc, ...]) -> None:
    committed = (ROOT / configref.DOC_PATH).read_text(encoding="utf-8")
    assert committed == configref.render(reference), (
        f"{configref.DOC_PATH} is stale: run `{configref.REGENERATE}` and commit the result")


def test_the_file_says_how_to_regenerate_it() -> None:
    head = (ROOT / configref.DOC_PATH).read_text(encoding="utf-8").splitlines()[:6]
    assert any(configref.REGENERATE in line for line in head)


def test_every_command_and_flag_is_documented(reference: tuple[configref.CommandDoc, ...]) -> None:
    assert [d.name for d in reference] == list(COMMANDS)
    for d in reference:
        p = parser_factory(d.module)({})
        options = {o for a in p._actions if not isinstance(a, argparse._HelpAction) for o in a.option_strings}
        assert {o for f in d.flags for o in f.flags} >= options, d.name


def test_env_vars_named_in_help_are_the_ones_the_code_reads(reference: tuple[configref.CommandDoc, ...]) -> None:
    """A help text that declares a fallback ("[env X]", "[X, default ...]") names one the parser really reads."""
    declared_somewhere = False
    for d in reference:
        for f in d.flags:
            named = set(re.findall(r"\[(?:env )?([A-Z][A-Z0-9_]+)\b", f.help))
            declared_somewhere |= bool(named)
            assert named <= set(f.env), (d.name, f.flags, named, f.env)
    assert declared_somewhere


def _toy_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    p.add_argument("--port", type=int, default=int(environ.get("TOY_PORT") or 80), help="port (default %(default)s)")
    p.add_argument("--name", default=environ.get("TOY_NAME", "a"), choices=("a", "b"))
    p.add_argument("--dry-run", action="store_true", default=environ.get("TOY_DRY") in ("1", "true"))
    p.add_argument("--ratio", type=float, default=float(environ.get("TOY_RATIO", "0.5")))
    p.add_argument("--plain", default=None, help="no environment")
    return p


def test_flag_docs_find_env_fallbacks_by_probing() -> None:
    docs = {f.flags[-1]: f for f in configref.flag_docs(_toy_parser)}
    assert [(k, f.env, f.default) for k, f in docs.items()] == [
        ("--port", ("TOY_PORT",), "80"),
        ("--name", ("TOY_NAME",), "a"),
        ("--dry-run", ("TOY_DRY",), "false"),
        ("--ratio", ("TOY_RATIO",), "0.5"),
        ("--plain", (), ""),
    ]
    assert docs["--port"].help == "port (default 80)"
    assert docs["--name"].help == "(one of: a, b)"


def test_health_environment_settings_map_to_their_fields(reference: tuple[configref.CommandDoc, ...]) -> None:
    plugin = next(d for d in reference if d.name == "device-plugin")
    ((_, settings),) = plugin.env_only
    by_env = {s.env[0]: s for s in settings}
    assert by_env["FRACGPU_HEALTH_MAX_TEMPERATURE"].name == "thresholds.max_temperature_c"
    assert by_env["FRACGPU_HEALTH_NODE_POLICY"].name == "node_policy"
    assert all(s.name != "(none)" for s in settings), [s.env for s in settings if s.name == "(none)"]


def test_check_mode_says_the_command_to_fix_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs").mkdir()
    assert configref.main(["--check"], tmp_path) == 1
    assert configref.REGENERATE in capsys.readouterr().out
    assert configref.main([], tmp_path) == 0
    assert configref.main(["--check"], tmp_path) == 0
