"""clipfed.deploy.cluster's files and command lines, checked with the parsers Flower itself uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.common.config import parse_config_args
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve

from clipfed.cli import build_parser
from clipfed.deploy import cli as deploy_cli
from clipfed.deploy.cluster import (
    DeployError,
    OverwriteRefused,
    make_node_keys,
    make_tls,
    node_config_string,
    parse_address,
    superexec_command,
    superlink_command,
    supernode_command,
    write_connection,
)
from clipfed.engines.launch import flower_env


def test_tls_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["10.1.2.3", "127.0.0.1", "link.example"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.1.2.3", "127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["link.example"]
    assert files.server_key.stat().st_mode & 0o077 == 0, "the private key is not world-readable"


def test_node_keys_load_as_flower_loads_them(tmp_path: Path) -> None:
    private, public = make_node_keys(tmp_path, "node0")
    key = load_ssh_private_key(private.read_bytes(), password=None)
    pub = load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(pub, ec.EllipticCurvePublicKey)
    assert uses_nist_ec_curve(pub) and key.public_key().public_numbers() == pub.public_numbers()


def test_write_connection_keeps_other_connections(tmp_path: Path) -> None:
    ca = make_tls(tmp_path / "certs", ["10.0.0.2"]).ca_cert
    write_connection(tmp_path, "a", "10.0.0.1:9091")
    write_connection(tmp_path, "b", "10.0.0.2:9091", root_certificates=ca, default=False)
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == "a"
    assert config["superlink"]["a"] == {"address": "10.0.0.1:9091", "insecure": True}
    assert config["superlink"]["b"] == {"address": "10.0.0.2:9091", "root-certificates": str(ca)}


def test_node_config_string_parses_back_with_flowers_parser() -> None:
    node = {"partition-id": 3, "num-partitions": 4, "data-dir": "/data/with space", "role": "malicious",
            "poison-rate": 0.5}
    assert dict(parse_config_args([node_config_string(node)])) == node


def test_auth_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        superlink_command(supernode_auth=True)


# A TLS handshake on 127.0.0.1 with the client context Python 3.13 makes by default
# (create_default_context + VERIFY_X509_STRICT); argv: ca, certificate, key. Prints "ok".
HANDSHAKE = """
import socket, ssl, sys, threading
ca, cert, key = sys.argv[1:4]
server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server.load_cert_chain(cert, key)
client = ssl.create_default_context(cafile=ca)
client.verify_flags |= ssl.VERIFY_X509_STRICT
listener = socket.create_server(("127.0.0.1", 0))
def serve():
    conn, _ = listener.accept()
    try:
        with server.wrap_socket(conn, server_side=True) as s:
            s.recv(1)
    except (ssl.SSLError, OSError):
        pass
thread = threading.Thread(target=serve)
thread.start()
with socket.create_connection(listener.getsockname()) as raw:
    with client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"x")
thread.join(10)
print("ok")
"""


def _python(name: str) -> str | None:
    """A runnable ``name``: on PATH, or an installed pyenv version's own binary (a pyenv shim for
    a version that is not active refuses to run)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for path in (shutil.which(name), *sorted(str(p) for p in root.glob(f"versions/*/bin/{name}"))):
        if path is None:
            continue
        ran = subprocess.run([path, "-c", "import ssl"], capture_output=True, timeout=60, check=False)
        if ran.returncode == 0:
            return path
    return None


def test_certificates_carry_the_extensions_strict_verification_needs(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).critical
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl on PATH")
def test_openssl_strict_verify_accepts_the_server_certificate(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["127.0.0.1", "localhost"])
    out = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(files.ca_cert),
                          str(files.server_cert)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("python", [sys.executable, "python3.13"])
def test_strict_default_context_completes_a_handshake(tmp_path: Path, python: str) -> None:
    interpreter = python if python == sys.executable else _python(python)
    if interpreter is None:
        pytest.skip(f"no runnable {python} on PATH")
    files = make_tls(tmp_path, ["127.0.0.1", "localhost"])
    out = subprocess.run([interpreter, "-c", HANDSHAKE, str(files.ca_cert), str(files.server_cert),
                          str(files.server_key)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_certs_and_keys_are_not_overwritten_without_force(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "certs", ["127.0.0.1"])
    ca = files.ca_cert.read_bytes()
    with pytest.raises(OverwriteRefused, match=r"ca\.crt.*--force"):
        make_tls(tmp_path / "certs", ["127.0.0.1"])
    assert files.ca_cert.read_bytes() == ca
    assert make_tls(tmp_path / "certs", ["127.0.0.1"], force=True).ca_cert.read_bytes() != ca

    private, public = make_node_keys(tmp_path / "keys", "node0")
    key = private.read_bytes()
    with pytest.raises(OverwriteRefused, match=r"node0.*--force"):
        make_node_keys(tmp_path / "keys", "node0")
    public.unlink()  # half a pair left: still refused, the private key may be registered
    with pytest.raises(OverwriteRefused, match="node0"):
        make_node_keys(tmp_path / "keys", "node0")
    assert private.read_bytes() == key
    assert make_node_keys(tmp_path / "keys", "node0", force=True)[0].read_bytes() != key


def test_deploy_certs_and_keys_commands_take_force(tmp_path: Path) -> None:
    certs = ["deploy", "certs", "--out-dir", str(tmp_path / "certs"), "--host", "127.0.0.1"]
    keys = ["deploy", "keys", "--out-dir", str(tmp_path / "keys"), "node0", "node1"]
    for argv in (certs, keys):
        args = build_parser().parse_args(argv)
        assert args.func(args) == 0
        with pytest.raises(OverwriteRefused, match="--force") as refused:
            args.func(args)
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, FileExistsError)
        forced = build_parser().parse_args([*argv, "--force"])
        assert forced.func(forced) == 0


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.1:", ":9091", "10.0.0.1:port", "10.0.0.1:0",
                                     "10.0.0.1:65536", "::1:9091", "[::1]", "10.0.0.1:-5"])
def test_addresses_without_host_and_port_are_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(DeployError, match="--address"):
        write_connection(tmp_path, "a", address)
    assert not (tmp_path / "config.toml").exists()
    with pytest.raises(DeployError, match="--superlink"):
        supernode_command(address, {"partition-id": 0})
    with pytest.raises(DeployError, match="--runtime-api-address"):
        superexec_command(address)


def test_good_addresses_parse() -> None:
    assert parse_address("10.0.0.1:9091") == ("10.0.0.1", 9091)
    assert parse_address("link.example:1") == ("link.example", 1)
    assert parse_address("[::1]:65535") == ("::1", 65535)


def test_connection_with_a_missing_or_non_pem_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"--root-certificates .*nope\.crt: no such file"):
        write_connection(tmp_path, "a", "10.0.0.1:9091", root_certificates=tmp_path / "nope.crt")
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate")
    with pytest.raises(DeployError, match="not a PEM certificate"):
        write_connection(tmp_path, "a", "10.0.0.1:9091", root_certificates=junk)
    assert not (tmp_path / "config.toml").exists()


def test_supernode_command_refuses_a_missing_ca_or_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_exec(command: list[str]) -> int:
        raise AssertionError(f"would exec {command}")

    monkeypatch.setattr(deploy_cli, "_exec", no_exec)
    base = ["deploy", "supernode", "--superlink", "10.0.0.1:9091", "--partition-id", "0",
            "--num-partitions", "2"]
    args = build_parser().parse_args([*base, "--root-certificates", str(tmp_path / "ca.crt")])
    with pytest.raises(DeployError, match="--root-certificates"):
        args.func(args)
    args = build_parser().parse_args([*base, "--key", str(tmp_path / "node0")])
    with pytest.raises(DeployError, match="--key .*node authentication needs TLS; give --root-certificates"):
        args.func(args)
    ca = make_tls(tmp_path / "certs", ["127.0.0.1"]).ca_cert
    args = build_parser().parse_args([*base, "--root-certificates", str(ca), "--key", str(tmp_path / "node0")])
    with pytest.raises(DeployError, match="--key .*no such file"):
        args.func(args)
    args = build_parser().parse_args([*base, "--malicious-rank", "-1"])
    with pytest.raises(DeployError, match="--malicious-rank"):
        args.func(args)


@pytest.mark.parametrize(("flags", "match"), [
    (["--nodes", "2", "--malicious", "3"], "--malicious 3: not a partition id"), (["--nodes", "0"], "--nodes 0")])
def test_deploy_local_refuses_attackers_outside_its_nodes_before_starting_anything(
        tmp_path: Path, flags: list[str], match: str) -> None:
    args = build_parser().parse_args(["deploy", "local", "--dir", str(tmp_path / "cluster"), *flags])
    with pytest.raises(DeployError, match=match):
        args.func(args)
    assert not (tmp_path / "cluster").exists(), "nothing started"


@pytest.mark.deploy
@pytest.mark.timeout(180)
def test_deploy_local_starts_registered_nodes_and_stop_ends_them(tmp_path: Path) -> None:
    env = {**flower_env(tmp_path / "home"), "FLWR_HOME": str(tmp_path / "home")}
    clipfed = [sys.executable, "-m", "clipfed.cli"]
    cluster = tmp_path / "cluster"
    subprocess.run([*clipfed, "deploy", "local", "--dir", str(cluster), "--nodes", "2", "--malicious", "1",
                    "--auth"], env=env, check=True, timeout=120)
    pids = json.loads((cluster / "logs" / "pids.json").read_text())
    try:
        assert sorted(pids) == ["node0", "node1", "superlink"]
        for pid in pids.values():
            os.kill(pid, 0)  # alive
        assert "--enable-supernode-auth" in (cluster / "logs" / "superlink.log").read_text()
    finally:
        subprocess.run([*clipfed, "deploy", "stop", str(cluster)], env=env, check=True, timeout=60)
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
