"""clipfed.deploy's files and command lines, checked with the parsers Flower itself uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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

from clipfed.deploy import (
    make_node_keys,
    make_tls,
    node_config_string,
    superlink_command,
    write_connection,
)
from clipfed.launch import flower_env


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
    write_connection(tmp_path, "a", "10.0.0.1:9091")
    write_connection(tmp_path, "b", "10.0.0.2:9091", root_certificates=Path("/ca.crt"), default=False)
    import tomllib

    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == "a"
    assert config["superlink"]["a"] == {"address": "10.0.0.1:9091", "insecure": True}
    assert config["superlink"]["b"] == {"address": "10.0.0.2:9091", "root-certificates": "/ca.crt"}


def test_node_config_string_parses_back_with_flowers_parser() -> None:
    node = {"partition-id": 3, "num-partitions": 4, "data-dir": "/data/with space", "role": "malicious",
            "poison-rate": 0.5}
    assert dict(parse_config_args([node_config_string(node)])) == node


def test_auth_without_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        superlink_command(supernode_auth=True)


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
