"""Shared pytest configuration. Fixtures that build worlds live next to the tests that use them."""

# The fake Kubernetes API server (tests/fakes/apiserver.py, docs/kube.md) for every suite.
from tests.fakes.apiserver import apiserver  # noqa: F401
