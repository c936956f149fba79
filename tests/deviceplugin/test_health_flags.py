"""GPU health settings are flags of `fracgpu device-plugin` (`--health-*`), with the `FRACGPU_HEALTH_*`
variables (and NVIDIA's DP_DISABLE_HEALTHCHECKS) as their environment fallbacks, and config file keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from fracgpu.cli import COMMANDS
from fracgpu.configfile import apply
from fracgpu.core.healthconfig import HealthConfig, HealthConfigError, NodePolicy, Thresholds, UnknownXids, XidPolicy
from fracgpu.deviceplugin.healthflags import health_config
from fracgpu.deviceplugin.main import main, parser
from tests.deviceplugin.test_main import EXAMPLE

EVERY_KEY = {
    "FRACGPU_HEALTH_POLL_INTERVAL": "5",
    "FRACGPU_HEALTH_BAD_CHECKS": "4",
    "FRACGPU_HEALTH_RECOVERY_CHECKS": "2000",
    "FRACGPU_HEALTH_FLAP_WINDOW": "60",
    "FRACGPU_HEALTH_NODE_POLICY": "Any-GPU",
    "FRACGPU_HEALTH_FATAL_XIDS": "79",
    "FRACGPU_HEALTH_IGNORED_XIDS": "13",
    "FRACGPU_HEALTH_UNKNOWN_XIDS": "fatal",
    "FRACGPU_HEALTH_MAX_TEMPERATURE": "off",
    "FRACGPU_HEALTH_MAX_POWER_RATIO": "1.5",
    "FRACGPU_HEALTH_MAX_ECC_UNCORRECTABLE": "3",
    "FRACGPU_HEALTH_MAX_RETIRED_PAGES": "none",
    "FRACGPU_HEALTH_MAX_MEMORY_USED_RATIO": "0.99",
    "DP_DISABLE_HEALTHCHECKS": "31",
}
EVERY_FLAG = [
    "--health-poll-interval", "5", "--health-bad-checks", "4", "--health-recovery-checks", "2000",
    "--health-flap-window", "60", "--health-node-policy", "any-gpu", "--health-fatal-xids", "79",
    "--health-ignored-xids", "13", "--health-unknown-xids", "fatal", "--health-max-temperature", "off",
    "--health-max-power-ratio", "1.5", "--health-max-ecc-uncorrectable", "3", "--health-max-retired-pages", "none",
    "--health-max-memory-used-ratio", "0.99", "--disable-healthchecks", "31",
]
EVERY_SETTING = HealthConfig(
    thresholds=Thresholds(max_temperature_c=None, max_power_ratio=1.5, max_ecc_uncorrectable=3,
                          max_retired_pages=None, max_memory_used_ratio=0.99),
    xids=XidPolicy(fatal=frozenset({79}), ignored=frozenset({13, 31}), unknown=UnknownXids.FATAL),
    poll_interval=5.0, bad_checks=4, recovery_checks=2000,
    max_recovery_checks=2000,  # unset: raised to the recovery run
    flap_window=60.0, node_policy=NodePolicy.ANY_GPU,
)


def config(argv: list[str], environ: dict[str, str]) -> HealthConfig:
    return health_config(parser(environ).parse_args(argv))


def test_the_defaults_are_the_cores() -> None:
    assert config([], {}) == HealthConfig()


@pytest.mark.parametrize(("argv", "environ"), [([], EVERY_KEY), (EVERY_FLAG, {})], ids=["environment", "flags"])
def test_every_setting_has_a_flag_and_a_variable(argv: list[str], environ: dict[str, str]) -> None:
    assert config(argv, environ) == EVERY_SETTING


def test_a_flag_beats_its_variable() -> None:
    assert config(["--health-bad-checks", "7"], {"FRACGPU_HEALTH_BAD_CHECKS": "4"}).bad_checks == 7


def test_the_config_file_sets_them_too(tmp_path: Path) -> None:
    path = tmp_path / "fracgpu.yaml"
    path.write_text("device-plugin:\n  health-node-policy: never\n  health-max-temperature: 'off'\n")
    args = apply("device-plugin", ["--config", str(path)], {}, list(COMMANDS), parser)
    cfg = config(args, {})
    assert (cfg.node_policy, cfg.thresholds.max_temperature_c) == (NodePolicy.NEVER, None)


@pytest.mark.parametrize(("environ", "message"), [
    ({"FRACGPU_HEALTH_NODE_POLICY": "some"}, "FRACGPU_HEALTH_NODE_POLICY='some' (environment): 'some' is not one of "
                                             "all-gpus, any-gpu, never"),
    ({"FRACGPU_HEALTH_BAD_CHECKS": "three"}, "FRACGPU_HEALTH_BAD_CHECKS='three' (environment): 'three' is not a "
                                             "whole number"),
    ({"FRACGPU_HEALTH_BAD_CHECKS": "0"}, "'0' must be a whole number above 0"),
    ({"FRACGPU_HEALTH_POLL_INTERVAL": "nan"}, "FRACGPU_HEALTH_POLL_INTERVAL='nan' (environment): 'nan' must be a "
                                              "finite number of seconds"),
    ({"FRACGPU_HEALTH_MAX_POWER_RATIO": "lots"}, "'lots' is not a number"),
    ({"FRACGPU_HEALTH_FATAL_XIDS": "48,abc"}, "'abc' is not an XID number"),
    ({"DP_DISABLE_HEALTHCHECKS": "xid"}, "DP_DISABLE_HEALTHCHECKS='xid' (environment): disabled health checks: "
                                         "'xid' is not an XID number"),
], ids=["policy", "not a number", "zero checks", "nan interval", "ratio", "xid list", "nvidia setting"])
def test_a_bad_value_is_a_one_line_refusal_naming_it(environ: dict[str, str], message: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        parser(environ).parse_args([])
    assert refused.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize(("argv", "message"), [
    (["--health-poll-interval", "0"], "poll interval: must be > 0 seconds"),
    (["--health-max-recovery-checks", "5"], "max recovery checks: must be >= recovery checks (30)"),
], ids=["no interval", "cap below the run"])
def test_settings_that_contradict_each_other_are_refused_by_the_core(argv: list[str], message: str) -> None:
    with pytest.raises(HealthConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(argv, {})


def test_the_plugin_refuses_them_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--backend", "simulated", "--gpus", str(EXAMPLE), "--no-kube", "--health-poll-interval", "0"]
    assert main(argv, environ={"NODE_NAME": "n"}) == 2
    assert "health settings: poll interval: must be > 0 seconds" in capsys.readouterr().err
