"""docs/configuration.md is generated from the flag tables (scripts/gen_config_reference.py) and must not go
stale."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fracgpu.cli import COMMANDS
from fracgpu.configfile import parser_factory
from fracgpu.startup import Flag, add_flags, positive_int
from scripts import gen_config_reference as configref

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


class Recording(Mapping[str, str]):
    """An empty environment that records which variables a parser looks up while it is built."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_env_vars_named_in_help_are_the_ones_the_code_reads(reference: tuple[configref.CommandDoc, ...]) -> None:
    """A help text that declares a fallback ("[env X]") names one the table declares, or (a parser not built
    from a table yet) one the parser reads."""
    declared_somewhere = False
    for d in reference:
        environ = Recording()
        parser_factory(d.module)(environ)
        for f in d.flags:
            named = set(re.findall(r"\[(?:env )?([A-Z][A-Z0-9_]+)\b", f.help))
            declared_somewhere |= bool(named)
            assert named <= (set(f.env) or environ.asked), (d.name, f.flags, named, f.env)
    assert declared_somewhere


TOY_FLAGS = (
    Flag("port", "port to listen on", "80", positive_int, old=("listen-port",)),
    Flag("name", "a name", "a", choices=("a", "b"), env=("TOY_NAME",)),
    Flag("dry-run", "change nothing", switch=True),
    Flag("plain", "no default", unset="none"),
)


def _toy_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_flags(p, TOY_FLAGS, environ, env_prefix="TOY_")
    return p


def test_flag_docs_read_the_table() -> None:
    docs = {f.flags[0]: f for f in configref.flag_docs(_toy_parser({"TOY_PORT": "8080"}))}
    assert [(k, f.flags, f.env, f.default) for k, f in docs.items()] == [
        ("--port", ("--port", "--listen-port"), ("TOY_PORT", "TOY_LISTEN_PORT"), "80"),  # the table's, not the env's
        ("--name", ("--name",), ("TOY_NAME",), "a"),
        ("--dry-run", ("--dry-run",), ("TOY_DRY_RUN",), "false"),
        ("--plain", ("--plain",), ("TOY_PLAIN",), ""),
    ]
    assert docs["--port"].help == "port to listen on (was --listen-port, deprecated) [env TOY_PORT] (default: 80)"
    assert docs["--name"].help == "a name [env TOY_NAME] (default: a) (one of: a, b)"


def test_a_flag_outside_the_table_is_refused_by_name() -> None:
    """Every command declares its flags in a table; one added with a bare add_argument would go undocumented."""
    p = _toy_parser({})
    p.add_argument("--ratio", type=float, default=0.5, help="not from a table")
    with pytest.raises(SystemExit, match=r"toy: --ratio is not declared in a fracgpu\.startup\.Flag table"):
        configref.flag_docs(p)


def test_the_health_thresholds_are_flags_with_their_variables(reference: tuple[configref.CommandDoc, ...]) -> None:
    plugin = next(d for d in reference if d.name == "device-plugin")
    by_env = {e: f for f in plugin.flags for e in f.env}
    assert by_env["FRACGPU_HEALTH_MAX_TEMPERATURE"].flags == ("--health-max-temperature",)
    assert by_env["FRACGPU_HEALTH_NODE_POLICY"].flags == ("--health-node-policy",)
    assert by_env["DP_DISABLE_HEALTHCHECKS"].flags == ("--disable-healthchecks",)


def test_check_mode_says_the_command_to_fix_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs").mkdir()
    assert configref.main(["--check"], tmp_path) == 1
    assert configref.REGENERATE in capsys.readouterr().out
    assert configref.main([], tmp_path) == 0
    assert configref.main(["--check"], tmp_path) == 0
