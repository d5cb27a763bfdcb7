"""Deployment on Flower's deployment engine: TLS, SuperNode keys, connections, processes.

The same ServerApp and ClientApp as in simulation, run by ``flower-superlink`` and one
``flower-supernode`` per client (on other hosts, or in network namespaces on one). This module
writes what those commands need (a CA and a SuperLink certificate whose SANs cover every address
nodes use, an EC key pair per SuperNode in OpenSSH format, the ``[superlink.<name>]`` connection
in ``$FLWR_HOME/config.toml``), builds their command lines (the same ones ``docker-compose.yml``
uses), registers SuperNode keys and starts/stops processes by PID.

Certificates carry the extensions strict X.509 verification requires (Python 3.13's default
context sets ``VERIFY_X509_STRICT``; ``openssl verify -x509_strict``): subject and authority key
identifiers, a critical key usage on the CA, critical basic constraints, serverAuth and SANs.
Existing keys and certificates are never overwritten unless asked (``force``): a registered
node's key and every distributed ``ca.crt`` would stop working.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clipfed.engines.launch import _bin, _stop_process_group, flower_env

SUPERLINK_PORT = 9091


class DeployError(ValueError):
    """A deployment setting or file that cannot work; the message names it and the fix."""


class OverwriteRefused(DeployError, FileExistsError):
    """Writing would replace existing keys or certificates (pass ``force`` / ``--force``)."""


def parse_address(address: str, key: str = "address") -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:9091``) as ``(host, port)``; ``DeployError`` naming ``key``."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
        host = "" if ":" in host else host  # an IPv6 host needs brackets
    if not sep or not host:
        raise DeployError(f"{key} {address!r} is not host:port (e.g. 10.0.0.5:{SUPERLINK_PORT}, "
                          f"[::1]:{SUPERLINK_PORT})")
    if not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise DeployError(f"{key} {address!r}: port {port!r} is not a number in 1..65535")
    return host, int(port)


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise OverwriteRefused(
            f"{', '.join(existing)} already exist(s); refusing to overwrite keys or certificates "
            "already handed out (pass --force to replace them, or choose another --out)")


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


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


def make_tls(out_dir: Path, hosts: Sequence[str], days: int = 365, force: bool = False) -> TLSFiles:
    """A private CA and a SuperLink certificate valid for ``hosts`` (IPs or DNS names).

    Every address a SuperNode or the ``flwr`` CLI dials must be in ``hosts``, or TLS refuses.
    Raises ``OverwriteRefused`` if any of the three files exists and ``force`` is false.
    """
    if not hosts:
        raise DeployError("no --host given: list every address SuperNodes and the flwr CLI dial")
    files = TLSFiles(out_dir / "ca.crt", out_dir / "server.pem", out_dir / "server.key")
    _refuse_overwrite([files.ca_cert, files.server_cert, files.server_key], force)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clipfed test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
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
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def make_node_keys(out_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair in OpenSSH format, as ``flwr supernode register`` expects.

    Raises ``OverwriteRefused`` if either file exists and ``force`` is false.
    """
    private, public = out_dir / name, out_dir / f"{name}.pub"
    _refuse_overwrite([private, public], force)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


# -- The flwr CLI's connection ----------------------------------------------------------------
def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None = None,
                     default: bool = True) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` (other entries kept).

    ``address`` is the SuperLink's ``host:port``; ``root_certificates`` the CA (a PEM file on this
    host, stored as an absolute path). Raises ``DeployError`` naming the bad one.
    """
    parse_address(address, "--address")
    if root_certificates is not None:
        root_certificates = check_ca_file(root_certificates)
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


def check_ca_file(path: Path | str, key: str = "--root-certificates") -> Path:
    """``path`` made absolute, if it is a PEM certificate file; else ``DeployError`` naming ``key``."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeployError(f"{key} {path}: no such file; copy ca.crt (from `clipfed deploy certs`) here")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise DeployError(f"{key} {path} is not a PEM certificate (expected ca.crt from "
                          "`clipfed deploy certs`)") from None
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
    parse_address(superlink, "--superlink")
    command = [_bin("flower-supernode"), "--superlink", superlink, "--isolation", isolation,
               "--host", host, "--port", str(port), "--node-config", node_config_string(node_config)]
    command += ["--root-certificates", str(root_certificates)] if root_certificates else ["--insecure"]
    if private_key is not None:
        command += ["--auth-supernode-private-key", str(private_key)]
    return command


def superexec_command(runtime_api_address: str, root_certificates: Path | str | None = None) -> list[str]:
    """``flower-superexec`` for process isolation: it pulls apps from a SuperLink (ServerApp) or a
    SuperNode (ClientApp) Runtime API and runs them; the app's dependencies must be installed."""
    parse_address(runtime_api_address, "--runtime-api-address")
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


def _group_gone(pgid: int, within: float) -> bool:
    """Whether process group ``pgid`` has no process left, polling for up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def stop_pids(pid_file: Path, grace: float = 10.0) -> list[str]:
    """Stop what ``pids.json`` lists (process groups we started) and return the names stopped:
    SIGTERM, SIGKILL for a group still there ``grace`` s later; it returns only once every group is
    gone (a fixed one-second wait raced with a loaded machine)."""
    stopped = []
    for name, pid in json.loads(pid_file.read_text()).items():
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(int(pid), sig)
            except ProcessLookupError:
                break
            if _group_gone(int(pid), wait):
                break
        stopped.append(name)
    return stopped
