"""docker-compose.yml brought up for real: images built, ``compose up -d``, 2 rounds of CLIP-Fed
through ``flwr run`` on 4 SuperNodes (one malicious), the result in ./runs on the host, then
``compose down -v`` leaving no container, network or volume behind.

Opt-in (``make test-docker``, which sets CLIPFED_DOCKER_TEST=1): it builds ~8 GB of images the
first time (torch's CUDA build) and takes minutes. Otherwise, and wherever no Docker engine can be
started, it skips with the reason. It uses a running engine, or starts ``dockerd`` itself (root,
``--iptables=false --bridge=none``, on a private socket) and stops it by PID afterwards. The images
come from ``docker/build-offline.sh``: stand-ins for the official Flower images (no registry is
needed) and the app image from a local wheelhouse. Traffic stays on loopback (the SuperLink's
published port, the wheelhouse) and the compose project's own bridge network.

Environment: CLIPFED_DOCKER_DATA_DIR (default: a small generated CIFAR-format set; a real CIFAR-10
folder works too, slower), CLIPFED_DOCKER_KEEP=1 keeps the run's folder in ./runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import write_fake_cifar

from clipfed.deploy.cluster import write_connection
from clipfed.engines.launch import COMPLETED, _bin, flower_env, free_port, run_status, stop_tree, write_run_config
from clipfed.runs.results import load_result, results_table

pytestmark = [pytest.mark.docker, pytest.mark.e2e, pytest.mark.deploy]

ROOT = Path(__file__).resolve().parents[1]
OPT_IN = "CLIPFED_DOCKER_TEST"
CONNECTION = "clipfed-docker"
NODES, MALICIOUS = 4, 3  # docker-compose.yml: supernode-3 has role="malicious"
# Hard limits per step, in seconds. The first build downloads the wheelhouse, debootstraps Debian
# and installs torch into the image; later ones come from Docker's layer cache.
BUILD_S, UP_S, HEALTHY_S, RUN_S, DOWN_S, ENGINE_S = 3600, 300, 180, 900, 300, 60


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def compose_command(env: dict[str, str]) -> list[str] | None:
    """``docker compose`` (the v2 plugin) where it exists, else ``docker-compose`` (v1), else None."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        if _run(["docker", "compose", "version"], 30, env, check=False).returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def engine_running(env: dict[str, str]) -> bool:
    try:
        return _run(["docker", "info", "--format", "{{.ServerVersion}}"], 30, env, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def no_engine_reason(env: dict[str, str]) -> str | None:
    """Why no Docker engine can be used or started here (a skip reason), or None. Starts nothing."""
    missing = [name for name in ("docker",) if shutil.which(name) is None]
    if missing or compose_command(env) is None:
        return ("no Docker engine can be started here: "
                + ("no docker CLI on PATH" if missing else "neither `docker compose` nor docker-compose is installed")
                + " (Debian: apt-get install docker.io docker-compose)")
    if engine_running(env):
        return None
    if shutil.which("dockerd") is None:
        return "no Docker engine can be started here: none is running and dockerd is not installed"
    if os.geteuid() != 0:
        return "no Docker engine can be started here: none is running and starting dockerd needs root"
    return None


@dataclass
class Engine:
    env: dict[str, str]  # os.environ plus DOCKER_HOST where this test started the engine
    compose: list[str]
    started: subprocess.Popen[bytes] | None = None


def _start_dockerd(folder: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """dockerd on a private socket under ``folder``: (process, DOCKER_HOST), or (None, why not)."""
    host = f"unix://{folder}/docker.sock"
    command = ["dockerd", "--host", host, "--pidfile", str(folder / "dockerd.pid"),
               "--exec-root", str(folder / "exec"), "--iptables=false", "--ip6tables=false", "--bridge=none"]
    if data_root := os.environ.get("CLIPFED_DOCKER_DATA_ROOT"):
        command += ["--data-root", data_root]
    log = folder / "dockerd.log"
    with log.open("ab") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    env = {**os.environ, "DOCKER_HOST": host}
    deadline = time.monotonic() + ENGINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if engine_running(env):
            return process, host
        time.sleep(0.5)
    _stop_dockerd(process)
    lines = [line for line in log.read_text(errors="replace").splitlines() if "level=error" in line or "failed" in line]
    return None, "dockerd did not start: " + (" | ".join(lines[-3:]) or log.read_text(errors="replace")[-500:])


def _stop_dockerd(process: subprocess.Popen[bytes]) -> None:
    """Stop the dockerd this test started, and its containerd, by PID (SIGTERM, then SIGKILL)."""
    stop_tree([process.pid], grace=30.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _remove_engine_folder(folder: Path) -> None:
    """dockerd leaves its network namespace bind-mounted (exec/netns/default): unmount what is
    mounted under ``folder``, deepest first, then remove it."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{folder}/")), key=len, reverse=True):
        subprocess.run(["umount", mount], capture_output=True, timeout=30, check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    env = dict(os.environ)
    reason = no_engine_reason(env)
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(reason or "a Docker engine can be used or started here, but this test builds ~8 GB of "
                              f"images and runs for minutes: run it with `make test-docker` ({OPT_IN}=1)")
    if reason is not None:
        pytest.skip(reason)
    compose = compose_command(env)
    assert compose is not None
    if engine_running(env):
        print(f"[docker] using the running Docker engine; compose: {' '.join(compose)}")
        yield Engine(env, compose)
        return
    folder = Path(tempfile.mkdtemp(prefix="cf-dockerd-", dir="/tmp"))  # short: socket paths
    process, host = _start_dockerd(folder)
    if process is None:
        _remove_engine_folder(folder)
        pytest.skip(f"no Docker engine can be started here: {host}")
    print(f"[docker] started dockerd (pid {process.pid}) on {host}; compose: {' '.join(compose)}")
    try:
        yield Engine({**env, "DOCKER_HOST": host}, compose, process)
    finally:
        _stop_dockerd(process)
        _remove_engine_folder(folder)
        print(f"[docker] stopped dockerd (pid {process.pid})")
        assert process.poll() is not None, "the dockerd this test started is stopped"
        assert not folder.exists(), f"{folder} is removed"


def build_images(engine: Engine) -> dict[str, str]:
    """docker/build-offline.sh; the FLWR_*_IMAGE variables it prints, for compose."""
    env = {**engine.env, "PYTHON": os.environ.get("CLIPFED_DOCKER_PYTHON", _bin("python"))}
    out = _run(["bash", str(ROOT / "docker" / "build-offline.sh")], BUILD_S, env)
    print(out.stderr, end="")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("FLWR_"))


def data_dir(tmp: Path) -> Path:
    """The CIFAR folder the containers mount: readable by their non-root user (uid 49999), so
    not under pytest's private (0700) temporary folders."""
    if chosen := os.environ.get("CLIPFED_DOCKER_DATA_DIR"):
        return Path(chosen).resolve()
    write_fake_cifar(tmp)
    for path in (tmp, *tmp.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tmp


def run_config(name: str) -> dict[str, object]:
    """No data-dir: the ServerApp and ClientApps read CLIPFED_DATA_DIR=/data, the host folder."""
    return {"num-clients": NODES, "num-malicious": 1, "num-server-rounds": 2, "partition": "iid",
            "batch-size": 16, "out-dir": "/runs", "run-name": name, "defense": "clipfed",
            "public-pool-fraction": 0.5, "clipfed-post-steps": 5, "clipfed-probe-size": 50,
            "round-timeout": 300}


def leftovers(engine: Engine, project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {kind: _run(["docker", *command, "--filter", label], 60, engine.env).stdout.split()
            for kind, command in (("containers", ["ps", "-aq"]), ("networks", ["network", "ls", "-q"]),
                                  ("volumes", ["volume", "ls", "-q"]))}


@pytest.mark.timeout(BUILD_S + UP_S + HEALTHY_S + RUN_S + DOWN_S + 4 * ENGINE_S)
def test_compose_up_runs_clipfed_and_down_leaves_nothing(engine: Engine) -> None:
    started = time.monotonic()
    images = build_images(engine)
    print(f"[docker] images built in {time.monotonic() - started:.0f} s: {images}")
    project = f"clipfed-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    scratch = Path(tempfile.mkdtemp(prefix="cf-compose-"))
    scratch.chmod(0o755)
    runs = ROOT / "runs"
    runs.mkdir(exist_ok=True)
    env = {**engine.env, **images, "CLIPFED_DATA_DIR": str(data_dir(scratch / "data")),
           "CLIPFED_SUPERLINK_PORT": str(port), "CLIPFED_UID": str(os.getuid()), "CLIPFED_GID": str(os.getgid())}
    compose = [*engine.compose, "--project-name", project, "--file", str(ROOT / "docker-compose.yml"),
               "--project-directory", str(ROOT)]
    home = scratch / "flwr-home"
    write_connection(home, CONNECTION, f"127.0.0.1:{port}")
    try:
        step = time.monotonic()
        _run([*compose, "up", "-d", "--no-build"], UP_S, env)
        deadline = time.monotonic() + HEALTHY_S
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                    break
            assert time.monotonic() < deadline, f"SuperLink not healthy on 127.0.0.1:{port} in {HEALTHY_S} s"
            time.sleep(1)
        print(f"[docker] compose up and SuperLink healthy in {time.monotonic() - step:.0f} s")
        step = time.monotonic()
        config = write_run_config(scratch / "run-config.toml", run_config(project))
        run_log = scratch / "flwr-run.log"
        with run_log.open("w") as log, contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([_bin("flwr"), "run", str(ROOT), CONNECTION, "--stream", "--run-config", str(config)],
                           env=flower_env(home), stdout=log, stderr=subprocess.STDOUT, timeout=RUN_S, check=False)
        print(run_log.read_text(errors="replace"))
        print(f"[docker] flwr run took {time.monotonic() - step:.0f} s")
        status = run_status(home, CONNECTION)[1]
        logs = "" if status == COMPLETED else _run([*compose, "logs", "--no-color", "--tail", "60"], 120, env,
                                                   check=False).stdout
        assert status == COMPLETED, logs[-8000:]
        result = load_result(runs / project)  # written by the ServerApp's container, read on the host
        print(results_table([result]))
    finally:
        step = time.monotonic()
        down = _run([*compose, "down", "-v", "--remove-orphans"], DOWN_S, env, check=False)
        left = leftovers(engine, project)
        print(f"[docker] compose down -v in {time.monotonic() - step:.0f} s; left of {project}: {left}")
        shutil.rmtree(scratch, ignore_errors=True)
        if os.environ.get("CLIPFED_DOCKER_KEEP") != "1":
            shutil.rmtree(runs / project, ignore_errors=True)
    assert down.returncode == 0, down.stderr[-3000:]
    assert left == {"containers": [], "networks": [], "volumes": []}, left
    assert result["status"] == "completed" and [r["round"] for r in result["rounds"]] == [0, 1, 2]
    last = result["rounds"][-1]
    assert last["participants"] == list(range(NODES)) and last["malicious"] == [MALICIOUS]
    assert last["defense"]["scores"]["partition"] == list(range(NODES))
    print(f"[docker] wall time {time.monotonic() - started:.0f} s")
