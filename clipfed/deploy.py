"""Deployment on Flower's deployment engine: TLS, SuperNode keys, connections, processes.

The same ServerApp and ClientApp as in simulation, run by ``flower-superlink`` and one
``flower-supernode`` per client (on other hosts, or in network namespaces on one). This module
writes what those commands need (a CA and a SuperLink certificate whose SANs cover every address
nodes use, an EC key pair per SuperNode in OpenSSH format, the ``[superlink.<name>]`` connection
in ``$FLWR_HOME/config.toml``), builds their command lines (the same ones ``docker-compose.yml``
uses), registers SuperNode keys and starts/stops processes by PID.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clipfed.launch import _bin, _stop_process_group, flower_env

SUPERLINK_PORT = 9091


# -- TLS and node keys ------------------------------------------------------------------------
@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_tls(out_dir: Path, hosts: Sequence[str], days: int = 365) -> TLSFiles:
    """A private CA and a SuperLink certificate valid for ``hosts`` (IPs or DNS names).

    Every address a SuperNode or the ``flwr`` CLI dials must be in ``hosts``, or TLS refuses.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clipfed test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(out_dir / "ca.crt", out_dir / "server.pem", out_dir / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def make_node_keys(out_dir: Path, name: str) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair in OpenSSH format, as ``flwr supernode register`` expects."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out_dir / name, out_dir / f"{name}.pub"
    _write_private(private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


# -- The flwr CLI's connection ----------------------------------------------------------------
def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None,
                     default: bool = True) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` (other entries kept)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    security = (f'root-certificates = "{root_certificates}"' if root_certificates is not None
                else "insecure = true")
    sections = _toml_sections(path.read_text() if path.exists() else "")
    sections[f"superlink.{name}"] = f'address = "{address}"\n{security}\n'
    if default or "superlink" not in sections:
        sections["superlink"] = f'default = "{name}"\n'
    text = "".join(f"[{head}]\n{body}\n" for head, body in sorted(sections.items()))
    path.write_text(text)
    return path


def _toml_sections(text: str) -> dict[str, str]:
    """``{header: body}`` of a flat TOML file (enough for Flower's config.toml)."""
    sections: dict[str, str] = {}
    head = None
    for line in text.splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            head = line.strip()[1:-1]
            sections[head] = ""
        elif head is not None and line.strip():
            sections[head] += line + "\n"
    return sections


def register_supernode(flwr_home: Path, connection: str, public_key: Path,
                       prefix: Sequence[str] = ()) -> int:
    """``flwr supernode register`` (under ``prefix``, e.g. ``ip netns exec NS``); the new node id."""
    out = subprocess.run([*prefix, _bin("flwr"), "supernode", "register", str(public_key), connection,
                          "--format", "json"], env=flower_env(flwr_home), capture_output=True,
                         text=True, timeout=60, check=False)
    try:
        payload = json.loads(out.stdout)
    except json.JSONDecodeError:
        payload = {}
    if out.returncode != 0 or not payload.get("success", False):
        raise RuntimeError(f"flwr supernode register {public_key} failed: "
                           f"{out.stdout.strip() or out.stderr.strip()}")
    return int(payload["node-id"])


# -- Command lines (the docker-compose.yml services run the same) ------------------------------
def node_config_string(config: Mapping[str, Any]) -> str:
    """``k=v`` pairs for ``--node-config``; strings quoted, as Flower parses them as TOML values."""
    def value(v: Any) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, (int, float)) else json.dumps(str(v))

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


def superlink_command(host: str = "0.0.0.0", port: int = SUPERLINK_PORT, tls: TLSFiles | None = None,
                      supernode_auth: bool = False, database: Path | str | None = None,
                      isolation: str = "subprocess") -> list[str]:
    """``flower-superlink``. ``isolation="process"``: a separate SuperExec runs the ServerApp."""
    command = [_bin("flower-superlink"), "--host", host, "--port", str(port),
               "--isolation", isolation, "--disable-runtime-dependency-installation"]
    if tls is None:
        if supernode_auth:
            raise ValueError("SuperNode authentication needs TLS: pass tls=")
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                    "--ssl-keyfile", str(tls.server_key)]
    if supernode_auth:
        command.append("--enable-supernode-auth")
    if database is not None:
        command += ["--database", str(database)]
    return command


def supernode_command(superlink: str, node_config: Mapping[str, Any], port: int = 9094,
                      root_certificates: Path | str | None = None, private_key: Path | str | None = None,
                      isolation: str = "subprocess", host: str = "127.0.0.1") -> list[str]:
    """``flower-supernode``; its Runtime API listens on ``host:port`` (``0.0.0.0`` when a
    SuperExec on another host or container runs its ClientApps, ``isolation="process"``)."""
    command = [_bin("flower-supernode"), "--superlink", superlink, "--isolation", isolation,
               "--host", host, "--port", str(port), "--node-config", node_config_string(node_config)]
    command += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def superexec_command(runtime_api_address: str, root_certificates: Path | str | None = None) -> list[str]:
    """``flower-superexec`` for process isolation: it pulls apps from a SuperLink (ServerApp) or a
    SuperNode (ClientApp) Runtime API and runs them; the app's dependencies must be installed."""
    command = [_bin("flower-superexec"), "--runtime-api-address", runtime_api_address]
    command += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    return command


# -- Processes --------------------------------------------------------------------------------
@dataclass
class Processes:
    """Processes this cluster started (each in its own session), stopped by PID, never by name."""

    log_dir: Path
    env: dict[str, str]
    started: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, command: Sequence[str], netns: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``command`` (inside network namespace ``netns`` if given), logging to ``<name>.log``."""
        full = (["ip", "netns", "exec", netns] if netns else []) + list(command)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            log.write(f"$ {shlex.join(full)}\n".encode())
            log.flush()
            process = subprocess.Popen(full, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started[name] = process
        self.write_pids()
        return process

    def stop(self, name: str) -> None:
        _stop_process_group(self.started[name])

    def stop_all(self) -> None:
        for name in reversed(list(self.started)):
            self.stop(name)

    def write_pids(self) -> None:
        (self.log_dir / "pids.json").write_text(
            json.dumps({n: p.pid for n, p in self.started.items()}, indent=2) + "\n")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def stop_pids(pid_file: Path) -> list[str]:
    """Stop what ``pids.json`` lists (process groups we started); returns the names stopped."""
    stopped = []
    for name, pid in json.loads(pid_file.read_text()).items():
        for sig in (15, 9):
            try:
                os.killpg(int(pid), sig)
            except ProcessLookupError:
                break
            time.sleep(1.0)
        stopped.append(name)
    return stopped
