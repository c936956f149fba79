"""Building clients: explicit host, kubeconfig + context; errors stay inside fracgpu.kube."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fracgpu.kube import client, errors
from fracgpu.kube.writer import KubeWriter
from tests.fakes.apiserver import FakeApiServer


def write_kubeconfig(path: Path, servers: dict[str, str], current: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": current,
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "u"}} for n in servers],
    }))
    return path


def test_kubeconfig_context_selects_the_server(apiserver: FakeApiServer, tmp_path: Path) -> None:
    apiserver.seed({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    path = write_kubeconfig(tmp_path / "config", {"fake": apiserver.url, "other": "http://127.0.0.1:1"}, "other")

    api = client.build_api_client(kubeconfig=str(path), context="fake", environ={})
    transport = client.Transport(api)
    try:
        assert KubeWriter(transport).get_node("n1")["metadata"]["name"] == "n1"
    finally:
        transport.close()


def test_explicit_host_wins(apiserver: FakeApiServer) -> None:
    api = client.build_api_client(host=apiserver.url, environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    try:
        assert api.configuration.host == apiserver.url
    finally:
        api.close()  # type: ignore[no-untyped-call]


def test_token_is_sent_as_bearer(apiserver: FakeApiServer) -> None:
    api = client.api_client_for_host(apiserver.url, token="s3cret")
    try:
        headers = api.param_serialize("GET", "/api/v1/nodes", auth_settings=["BearerToken"])[2]
        assert headers["authorization"] == "Bearer s3cret"
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("environ", [{}, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}],
                         ids=["no-kubeconfig", "in-cluster-without-token"])
def test_missing_configuration_is_a_kube_config_error(tmp_path: Path, environ: dict[str, str]) -> None:
    with pytest.raises(errors.KubeConfigError):
        client.build_api_client(environ={**environ, "KUBECONFIG": str(tmp_path / "absent")})
