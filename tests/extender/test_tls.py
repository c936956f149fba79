"""The extender over real HTTPS, with and without client certificates (mutual TLS).

A CA of fracgpu signs the extender's serving certificate and fracgpu-scheduler's client
certificate, as the manifests' cert-manager objects do; a second CA plays an outsider.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fracgpu.extender.app import make_app
from fracgpu.extender.main import build_tls, parse_args
from fracgpu.servingtls import CertificateReloader, make_server_context
from tests.extender.builders import bind_args, filter_args, node_obj, pod_obj
from tests.extender.conftest import World, build_world

NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    obj: x509.Certificate
    private: ec.EllipticCurvePrivateKey


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path, cert, key)


def make_ca(directory: Path, name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_BEFORE + datetime.timedelta(days=365 * 50))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _write(directory, name, cert, key)


def issue(directory: Path, ca: Issued, name: str, *, server: bool) -> Issued:
    """A leaf for `name` (CN and DNS SAN; 127.0.0.1 too for a server), server or client usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if server:
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.obj.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOT_BEFORE).not_valid_after(NOT_BEFORE + datetime.timedelta(days=365 * 50))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca.private, hashes.SHA256()))
    return _write(directory, name, cert, key)


@dataclass
class Pki:
    ca: Issued
    server: Issued
    scheduler: Issued  # fracgpu-scheduler's client certificate
    stranger: Issued  # right CA, another name
    outsider: Issued  # another CA, the scheduler's name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "fracgpu-ca"), make_ca(d / "other", "other-ca")
    return Pki(ca, issue(d, ca, "fracgpu-extender.fracgpu-system.svc", server=True),
               issue(d, ca, "fracgpu-scheduler", server=False), issue(d, ca, "someone-else", server=False),
               issue(d / "other", other, "fracgpu-scheduler", server=False))


@dataclass
class Served:
    url: str
    world: World
    server_ctx: ssl.SSLContext

    async def call(self, method: str, path: str, client: Issued | None, ca: Path, body: Any = None
                   ) -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=str(ca))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s, \
                s.request(method, self.url + path, json=body) as r:
            text = await r.text()
            return r.status, (await r.json() if r.content_type == "application/json" else text)


Serve = Callable[..., Awaitable[Served]]
POD = pod_obj("p1", 50)


@pytest.fixture
async def serve_tls(pki: Pki) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(client_ca: bool = True, client_names: frozenset[str] | None = frozenset()) -> Served:
        world = build_world([node_obj("n1"), POD])
        world.deps.client_names = client_names if client_ca else None
        ctx = make_server_context(str(pki.server.cert), str(pki.server.key), str(pki.ca.cert) if client_ca else None)
        runner = web.AppRunner(make_app(world.deps), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        runners.append(runner)
        return Served(f"https://127.0.0.1:{runner.addresses[0][1]}", world, ctx)

    yield start
    for r in runners:
        await r.cleanup()


async def test_without_a_client_certificate_the_verbs_are_refused(serve_tls: Serve, pki: Pki) -> None:
    s = await serve_tls()
    for path, body in (("/bind", bind_args(POD, "n1")), ("/filter", filter_args(POD, ["n1"]))):
        status, out = await s.call("POST", path, None, pki.ca.cert, body)
        assert status == 403 and "client certificate" in out["Error"], path
    assert s.world.binder.bindings == []
    # probes (the kubelet presents no certificate) and metrics stay reachable
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await s.call("GET", path, None, pki.ca.cert))[0] == 200, path
    _, metrics = await s.call("GET", "/metrics", None, pki.ca.cert)
    assert 'fracgpu_extender_refused_clients_total{verb="bind"} 1.0' in metrics


async def test_the_schedulers_certificate_may_bind(serve_tls: Serve, pki: Pki) -> None:
    s = await serve_tls(client_names=frozenset({"fracgpu-scheduler"}))
    status, out = await s.call("POST", "/filter", pki.scheduler, pki.ca.cert, filter_args(POD, ["n1"]))
    assert status == 200 and out["NodeNames"] == ["n1"]
    status, out = await s.call("POST", "/bind", pki.scheduler, pki.ca.cert, bind_args(POD, "n1"))
    assert (status, out["Error"]) == (200, "")
    assert [b[:3] for b in s.world.binder.bindings] == [("default", "p1", "n1")]


async def test_a_certificate_of_the_ca_with_another_name_is_refused(serve_tls: Serve, pki: Pki) -> None:
    s = await serve_tls(client_names=frozenset({"fracgpu-scheduler"}))
    status, out = await s.call("POST", "/bind", pki.stranger, pki.ca.cert, bind_args(POD, "n1"))
    assert status == 403 and "names none of fracgpu-scheduler" in out["Error"]
    # without --client-names any certificate of the CA will do
    s = await serve_tls()
    assert (await s.call("POST", "/bind", pki.stranger, pki.ca.cert, bind_args(POD, "n1")))[1]["Error"] == ""


async def test_a_certificate_of_another_ca_fails_the_handshake(serve_tls: Serve, pki: Pki) -> None:
    s = await serve_tls()
    with pytest.raises(aiohttp.ClientError):
        await s.call("POST", "/bind", pki.outsider, pki.ca.cert, bind_args(POD, "n1"))
    assert s.world.binder.bindings == []


async def test_plain_http_to_the_tls_port_gets_no_answer(serve_tls: Serve) -> None:
    s = await serve_tls()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(s.url.replace("https://", "http://") + "/healthz") as r:
                await r.read()


async def test_server_tls_without_a_client_ca_serves_every_client(serve_tls: Serve, pki: Pki) -> None:
    s = await serve_tls(client_ca=False)
    status, out = await s.call("POST", "/bind", None, pki.ca.cert, bind_args(POD, "n1"))
    assert (status, out["Error"]) == (200, "")


async def test_a_rotated_certificate_is_served_to_new_connections(
        serve_tls: Serve, pki: Pki, tmp_path: Path) -> None:
    s = await serve_tls()
    live = tmp_path / "live"
    live.mkdir()
    (live / "tls.crt").write_bytes(pki.server.cert.read_bytes())
    (live / "tls.key").write_bytes(pki.server.key.read_bytes())
    reloader = CertificateReloader(s.server_ctx, str(live / "tls.crt"), str(live / "tls.key"), str(pki.ca.cert))
    assert not reloader.check()  # nothing changed
    new_ca = make_ca(tmp_path / "new", "new-ca")
    rotated = issue(tmp_path / "new", new_ca, "fracgpu-extender.fracgpu-system.svc", server=True)
    for suffix, src in (("crt", rotated.cert), ("key", rotated.key)):
        tmp = live / f"tls.{suffix}.new"
        tmp.write_bytes(src.read_bytes())
        tmp.replace(live / f"tls.{suffix}")  # atomic, as the kubelet swaps Secret files
    assert reloader.check()
    assert (await s.call("GET", "/healthz", None, new_ca.cert))[0] == 200  # the new chain
    with pytest.raises(aiohttp.ClientError):
        await s.call("GET", "/healthz", None, pki.ca.cert)  # the old chain no longer matches


@pytest.mark.parametrize(
    ("flags", "env", "error"),
    [
        (["--client-ca", "ca.crt"], {}, "--client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "tls.crt"], {}, "--tls-cert and --tls-key go together"),
        (["--tls-cert", "c", "--tls-key", "k", "--client-names", "x"], {}, "--client-names needs --client-ca"),
    ],
)
def test_tls_flags_that_do_not_go_together(flags: list[str], env: dict[str, str], error: str) -> None:
    from fracgpu.startup import ConfigError

    with pytest.raises(ConfigError, match=error):
        build_tls(parse_args(flags, env))


def test_tls_flags_fall_back_to_the_environment() -> None:
    env = {"FRACGPU_EXTENDER_TLS_CERT": "/tls/tls.crt", "FRACGPU_EXTENDER_TLS_KEY": "/tls/tls.key",
           "FRACGPU_EXTENDER_CLIENT_CA": "/tls/ca.crt", "FRACGPU_EXTENDER_CLIENT_NAMES": "fracgpu-scheduler, x"}
    tls = build_tls(parse_args([], env))
    assert tls is not None
    assert (tls.cert, tls.key, tls.client_ca) == ("/tls/tls.crt", "/tls/tls.key", "/tls/ca.crt")
    assert tls.client_names == {"fracgpu-scheduler", "x"}
    assert build_tls(parse_args([], {})) is None
