"""Run the app through the real ``flwr`` CLI against a SuperLink this process owns.

``flwr run .`` on the default ``:local:`` connection starts a detached SuperLink on fixed ports
that outlives the command and is shared by every run on the machine. For reproducible,
isolated runs (and tests) we instead start ``flower-superlink --simulation`` ourselves on free
ports with a private ``FLWR_HOME``, point a named connection at it, check the run's final status
with ``flwr list --format json`` (``flwr run --stream`` may exit 0 on a failed run), and stop
the SuperLink by its PID (and process group) at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CONNECTION = "clipfed-local"
COMPLETED = "finished:completed"


class FlowerRunError(RuntimeError):
    """The run did not finish as ``finished:completed``."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int | None
    status: str
    seconds: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """A Flower executable from this interpreter's environment (its bin/ must be on PATH too)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_run_config(path: Path, run_config: Mapping[str, Any]) -> Path:
    path.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in run_config.items()))
    return path


def _stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the group led by ``process`` (started with its own session)."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0,
                 verify: str | bool = True, netns: str | None = None, log: Path | None = None) -> None:
    """Poll a SuperLink's ``/health`` until it answers (through ``ip netns exec`` when it lives in
    a network namespace); raise ``FlowerRunError`` if it exits or stays unhealthy."""
    see = f"; see {log}" if log is not None else ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FlowerRunError(f"flower-superlink exited with {process.returncode}{see}")
        if netns is None:
            try:
                if httpx.get(url, timeout=1.0, verify=verify).is_success:
                    return
            except httpx.HTTPError:
                pass
        else:
            curl = ["ip", "netns", "exec", netns, "curl", "-sf", "-o", "/dev/null", "--max-time", "1"]
            curl += ["--cacert", str(verify)] if isinstance(verify, str) else []
            if subprocess.run([*curl, url], check=False).returncode == 0:
                return
        time.sleep(0.3)
    raise FlowerRunError(f"flower-superlink at {url} not healthy after {timeout:.0f} s{see}")


@dataclass(frozen=True)
class LocalSuperLink:
    port: int
    pid: int


@contextmanager
def local_superlink(flwr_home: Path, startup_timeout: float = 60.0) -> Iterator[LocalSuperLink]:
    """A simulation SuperLink on a free port, registered as connection ``clipfed-local``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log = (flwr_home / "superlink.log").open("ab")
    env = flower_env(flwr_home)
    # Ray's socket paths must stay under 107 bytes: keep its temp folder short, and ours.
    ray_tmp = Path(tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp"))
    env.setdefault("RAY_TMPDIR", str(ray_tmp))
    process = subprocess.Popen(
        [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
         "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db"),
         "--disable-runtime-dependency-installation"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, startup_timeout,
                     log=flwr_home / "superlink.log")
        yield LocalSuperLink(port, process.pid)
    finally:
        _stop_process_group(process)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def run_status(flwr_home: Path, connection: str = CONNECTION,
               prefix: Sequence[str] = ()) -> tuple[int | None, str]:
    """(run id, status) of the latest run on a SuperLink, from ``flwr list --format json``.

    ``prefix``: what to run the CLI under (``ip netns exec NS`` where the SuperLink is reachable).
    """
    out = subprocess.run([*prefix, _bin("flwr"), "list", connection, "--format", "json"],
                         env=flower_env(flwr_home), capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return None, f"unknown ({out.stdout.strip() or out.stderr.strip()})"
    if not runs:
        return None, "unknown (no run listed)"
    latest = max(runs, key=lambda r: str(r.get("created-at", "")))
    return int(latest["run-id"]), str(latest["status"])


def flwr_run(
    app_dir: Path,
    run_config: Mapping[str, Any],
    *,
    num_supernodes: int,
    cpus_per_client: int = 1,
    timeout: float = 3600.0,
    flwr_home: Path | None = None,
) -> RunOutcome:
    """``flwr run`` the app in simulation and wait; raise ``FlowerRunError`` unless it completed."""
    own_home = flwr_home is None
    home = Path(tempfile.mkdtemp(prefix="clipfed-flwr-")) if own_home else Path(flwr_home)
    started = time.monotonic()
    try:
        with local_superlink(home):
            config_file = write_run_config(home / "run-config.toml", run_config)
            command = [
                _bin("flwr"), "run", str(app_dir), CONNECTION, "--stream",
                "--run-config", str(config_file),
                "--federation-config",
                f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client}",
            ]
            try:
                subprocess.run(command, env=flower_env(home), timeout=timeout, check=False)
            except subprocess.TimeoutExpired:
                run_id, status = run_status(home)
                raise FlowerRunError(f"run {run_id} still {status} after {timeout:.0f} s") from None
            run_id, status = run_status(home)
    finally:
        if own_home:
            shutil.rmtree(home, ignore_errors=True)
    outcome = RunOutcome(run_id, status, time.monotonic() - started)
    if status != COMPLETED:
        raise FlowerRunError(f"run {run_id} ended as {status!r}, not {COMPLETED!r}")
    return outcome
