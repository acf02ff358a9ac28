"""HTTPS straight from `fnserve up --tls-cert/--tls-key`: a real router process with a certificate made
here by the openssl CLI, reached by urllib and by the `fnserve` CLI trusting it through FNSERVE_CA_FILE."""

from __future__ import annotations

import subprocess
from http.client import HTTPException
from pathlib import Path

import pytest

from tests.conftest import http, refused_start, running_router

pytestmark = pytest.mark.slow


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate for 127.0.0.1 and localhost with its key, and a second key of the same
    kind that belongs to no certificate."""
    folder = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"))
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(folder / "other.pem"))
    (folder / "notes.txt").write_text("not a certificate\n")
    return folder


def test_the_router_serves_https_and_the_cli_trusts_it_through_fnserve_ca_file(tmp_path: Path, pki: Path) -> None:
    with running_router(tmp_path / "state", tls=(pki / "cert.pem", pki / "key.pem")) as router:
        assert router.url.startswith("https://")
        assert f"listening on https://127.0.0.1:{router.port}" in router.log()
        status, _, body = http("GET", f"{router.url}/v2/health/ready", context=router.context)
        assert status == 200 and body == {"ready": True}

        with pytest.raises((OSError, HTTPException)):  # plain HTTP on the TLS port gets no answer
            http("GET", f"http://127.0.0.1:{router.port}/v2/health/ready", timeout=10)

        listed = router.cli("keys", "ls", check=True)  # FNSERVE_URL=https://…, FNSERVE_CA_FILE=cert.pem
        assert router.admin_key.split("_")[1] in listed.stdout

        untrusted = router.cli("keys", "ls", env={"FNSERVE_CA_FILE": ""})
        assert untrusted.returncode == 5 and "Traceback" not in untrusted.stderr  # unreachable, as far as it knows
        assert untrusted.stderr.strip().splitlines() == [
            f"fnserve: cannot verify the certificate of {router.url} (self-signed certificate); "
            "set FNSERVE_CA_FILE to the PEM file of the CA that signed it"]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--tls-cert", "cert.pem", "--tls-key", "other.pem"], "TLS key {pki}/other.pem: does not match the certificate "
                                                           "{pki}/cert.pem"),
    (["--tls-cert", "missing.pem", "--tls-key", "key.pem"], "TLS certificate {pki}/missing.pem: no such file"),
    (["--tls-cert", "notes.txt", "--tls-key", "key.pem"], "TLS certificate {pki}/notes.txt: not a PEM certificate"),
    (["--tls-cert", "cert.pem", "--tls-key", "notes.txt"], "TLS key {pki}/notes.txt: not a PEM private key"),
    (["--tls-cert", "cert.pem"], "--tls-cert needs --tls-key too"),
], ids=["mismatched-key", "missing-cert", "not-a-cert", "not-a-key", "cert-alone"])
def test_a_pair_the_router_cannot_serve_ends_the_start_in_one_line(tmp_path: Path, pki: Path, flags: list[str],
                                                                    expected: str) -> None:
    paths = [f if f.startswith("--") else str(pki / f) for f in flags]
    state = tmp_path / "state"
    assert refused_start(state, *paths).startswith("fnserve: " + expected.format(pki=pki))
    assert not state.exists()  # checked before anything was made, even the state folder
