"""The helm binary for the chart tests: the pinned v3.8.1 (scripts/get_helm.py), fetched once per
machine. Where it cannot be had (offline, another platform) the tests that render skip and say
why; the structural tests in test_chart_files.py run anyway."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.get_helm import HelmUnavailable, ensure_helm


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return ensure_helm()
    except HelmUnavailable as e:
        pytest.skip(f"no helm binary, the chart is not rendered: {e}")
