"""TLS and mTLS between the controller and a gRPC service, with certificates made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.common.grpc_client import check_health, create_channel
from services.common.grpc_server import serve
from services.common.settings import GrpcClientSettings
from services.controller.clients import ServiceClients
from services.controller.config import ControllerSettings
from services.vad.config import VadSettings
from services.vad.server import VadService
from tests.helpers.grpc import TEST_SERVER_SETTINGS

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("certs")
    key = ["-newkey", "rsa:2048", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=stepaudio-test-ca", cwd=d)  # fmt: skip
    openssl("req", "-x509", *key, "-keyout", "other.key", "-out", "other.pem", "-days", "1",
            "-subj", "/CN=someone-else", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "controller"):
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
                cwd=d)  # fmt: skip
    return d


def server_tls(d: Path, mutual: bool) -> dict[str, str]:
    tls = {"cert_file": str(d / "server.pem"), "key_file": str(d / "server.key")}
    return tls | ({"client_ca_file": str(d / "ca.pem")} if mutual else {})


async def healthy(target: str, **tls: str) -> bool:
    channel = create_channel(GrpcClientSettings(target=target, tls=tls))
    try:
        return await check_health(channel, "", timeout_s=5)
    finally:
        await channel.close()


async def test_tls_service_refuses_plaintext_and_unknown_cas(certs: Path) -> None:
    settings = VadSettings(**TEST_SERVER_SETTINGS, tls=server_tls(certs, mutual=False))
    async with serve(VadService(settings, CollectorRegistry()), settings) as handle:
        assert await healthy(handle.address, ca_file=str(certs / "ca.pem"))
        assert not await healthy(handle.address)  # plaintext
        assert not await healthy(handle.address, ca_file=str(certs / "other.pem"))  # wrong CA


async def test_mtls_needs_the_client_certificate_and_the_controller_presents_it(
    certs: Path,
) -> None:
    settings = VadSettings(**TEST_SERVER_SETTINGS, tls=server_tls(certs, mutual=True))
    async with serve(VadService(settings, CollectorRegistry()), settings) as handle:
        ca = str(certs / "ca.pem")
        assert not await healthy(handle.address, ca_file=ca)  # no client certificate
        client_tls = {
            "ca_file": ca,
            "cert_file": str(certs / "controller.pem"),
            "key_file": str(certs / "controller.key"),
        }
        assert await healthy(handle.address, **client_tls)
        controller = ControllerSettings(
            services={"vad": handle.address, "tokenizer": handle.address,
                      "llm": handle.address, "tts": handle.address},
            tls=client_tls,
        )  # fmt: skip
        clients = ServiceClients.connect(controller)
        try:
            assert (await clients.health(timeout_s=5))["vad"] is True
        finally:
            await clients.close()
