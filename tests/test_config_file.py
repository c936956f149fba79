"""`fracgpu <command> --config FILE`: the file becomes the command's own flags; bad files are named."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fracgpu.cli import COMMANDS
from fracgpu.cli import main as cli_main
from fracgpu.configfile import ConfigFileError, parser_factory, read_section, split_config_flag, to_args
from fracgpu.startup import is_deprecated
from tests.sim.test_snapshot_cli import snapshot_two_nodes  # noqa: F401  (fixture)


def toy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--policies", default="fracgpu")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--label", action="append", default=[])
    return p


@pytest.mark.parametrize(
    ("section", "argv"),
    [
        ({"k": 3}, ["--k", "3"]),
        ({"policies": "binpack=1,topology=0.5"}, ["--policies", "binpack=1,topology=0.5"]),
        ({"dry-run": True}, ["--dry-run"]),
        ({"dry-run": False}, []),
        ({"label": ["a=1", "b=2"]}, ["--label", "a=1", "--label", "b=2"]),
        ({"k": 2, "dry-run": True}, ["--k", "2", "--dry-run"]),
    ],
)
def test_a_section_is_the_flags_it_stands_for(section: dict[str, object], argv: list[str]) -> None:
    assert to_args(section, toy_parser(), "f.yaml", "toy") == argv


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kk": 3}, "config f.yaml: toy has no setting 'kk' (settings: dry-run, k, label, policies)"),
        ({"dry-run": "yes"}, "config f.yaml: toy.dry-run is a switch: true or false"),
        ({"k": [1, 2]}, "config f.yaml: toy.k takes one value, got a list"),
        ({"k": {"a": 1}}, "config f.yaml: toy.k must be a string, number or boolean, got dict"),
        ({"help": True}, "config f.yaml: toy has no setting 'help'"),
    ],
)
def test_bad_sections_are_refused_with_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigFileError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        to_args(section, toy_parser(), "f.yaml", "toy")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "must be a mapping of command name to its settings, got list"),
        ("extender: {k: 1}\nsimulat: {}", "unknown section 'simulat' (sections: extender, simulate)"),
        ("simulate: 3", "section 'simulate' must be a mapping of flag name to value, got int"),
        ("simulate: [", "not YAML"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_section(str(path), "simulate", ["extender", "simulate"])


def test_the_flag_or_the_environment_names_the_file() -> None:
    assert split_config_flag(["--config", "a.yaml", "--k", "2"], {}) == ("a.yaml", ["--k", "2"])
    assert split_config_flag(["--config=a.yaml"], {"FRACGPU_CONFIG": "b.yaml"}) == ("a.yaml", [])
    assert split_config_flag(["--k", "2"], {"FRACGPU_CONFIG": "b.yaml"}) == ("b.yaml", ["--k", "2"])
    assert split_config_flag(["--k", "2", "--", "--config", "x"], {}) == (None, ["--k", "2", "--", "--config", "x"])
    with pytest.raises(ConfigFileError, match="--config needs a file"):
        split_config_flag(["--config"], {})


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_of_every_command_can_come_from_the_file(command: str) -> None:
    """Each long flag (its default, as a value) turns into arguments the command's parser accepts."""
    build = parser_factory(COMMANDS[command][0])
    parser = build({})
    section: dict[str, object] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or isinstance(action, argparse._HelpAction | argparse._VersionAction) or is_deprecated(action):
            continue  # an old name's default is SUPPRESS; it is a key too (tests/test_cli_help.py)
        if longs[0] == "--config":
            continue  # the file itself, read by fracgpu.cli before the command's parser
        key = longs[0][2:]
        if action.nargs == 0:
            section[key] = False
        elif action.default not in (None, [], ()) and not isinstance(action.default, list | tuple):
            section[key] = action.default if isinstance(action.default, int | float | str) else str(action.default)
    parser.parse_args(to_args(section, parser, "f.yaml", command))


def test_inspect_reads_its_settings_from_the_file_and_flags_win(
    tmp_path: Path, snapshot_two_nodes: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    config = tmp_path / "fracgpu.yaml"
    config.write_text(f"inspect:\n  snapshot: {snapshot_two_nodes}\n  output: json\n"
                      "extender:\n  k: 2\n")  # other sections are checked only by their own command
    assert cli_main(["inspect", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["tenants"][0]["tenant"] == "ns/team"
    assert cli_main(["inspect", "--config", str(config), "-o", "table"]) == 0
    assert "team/run" in capsys.readouterr().out


def test_a_bad_file_stops_the_command_with_its_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "fracgpu.yaml"
    config.write_text("inspect:\n  snapshots: x.yaml\n")
    assert cli_main(["inspect", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fracgpu inspect: config {config}: inspect has no setting 'snapshots' (settings: ")
    assert cli_main(["inspect", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read it" in capsys.readouterr().err
