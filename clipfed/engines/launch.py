"""Run the app through the real ``flwr`` CLI against a SuperLink this process owns.

``flwr run .`` on the default ``:local:`` connection starts a detached SuperLink on fixed ports
that outlives the command and is shared by every run on the machine. For reproducible,
isolated runs (and tests) we instead start ``flower-superlink --simulation`` ourselves on free
ports with a private ``FLWR_HOME``, point a named connection at it, check the run's final status
with ``flwr list --format json`` (``flwr run --stream`` may exit 0 on a failed run), and stop
everything it started by PID at the end: on success, failure, Ctrl-C (SIGINT) and SIGTERM alike.

"Everything it started" is found in /proc (Linux): the SuperLink, its SuperExec (in a session of its
own), ``flwr-simulation`` and Ray's processes, which ``setpgrp`` themselves and outlive their parents;
a token in their environment finds those that were re-parented to init. A failed or interrupted
run keeps its logs (the SuperLink's, which holds the ServerApp's and ClientApps', and what ``flwr
run`` printed) in a folder its error message names, and leaves no temporary folder.
"""

from __future__ import annotations

import codecs
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from clipfed.errors import UserError

CONNECTION = "clipfed-local"
COMPLETED = "finished:completed"
RUN_TOKEN_ENV = "CLIPFED_RUN_TOKEN"  # marks every process a local SuperLink starts (see owned_processes)
LOGS = ("superlink.log", "flwr-run.log")  # what a failed or interrupted run keeps


class FlowerRunError(RuntimeError):
    """The run did not finish as ``finished:completed``."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP stopped a run (after everything it started was stopped)."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    def __reduce__(self) -> tuple[type[Interrupted], tuple[int, str]]:
        """Pickle as (signum, message): a bench worker's interrupted run sends it to the parent,
        and the default (the message alone) would not rebuild, breaking the whole pool."""
        return type(self), (self.signum, str(self))


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


@dataclass(frozen=True)
class _Proc:
    ppid: int
    pgid: int
    sid: int
    start: int  # clock ticks after boot: tells a process from a later one that reuses its PID
    zombie: bool


def _stat(pid: int) -> _Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return _Proc(int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0] == "Z")


def _processes() -> dict[int, _Proc]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (proc := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = proc
    return table


def _carries(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def owned_processes(roots: Collection[int], token: str | None = None) -> dict[int, int]:
    """Live processes that ``roots`` started, as PID -> start time: the roots, their descendants,
    members of their process groups and sessions, and (with ``token``) every process whose
    environment holds ``CLIPFED_RUN_TOKEN=token``, which finds those re-parented to init after
    their parent died. Zombies and this process are left out."""
    table = _processes()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, proc in table.items():
        children[proc.ppid].append(pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += children[pid]
    leaders = set(roots)
    found |= {pid for pid, proc in table.items() if proc.pgid in leaders or proc.sid in leaders}
    if token:
        marker = f"{RUN_TOKEN_ENV}={token}\0".encode()
        found |= {pid for pid in table if _carries(pid, marker)}
    found.discard(os.getpid())
    return {pid: table[pid].start for pid in found if not table[pid].zombie}


def _alive(processes: Mapping[int, int]) -> list[int]:
    return [pid for pid, start in processes.items()
            if (proc := _stat(pid)) is not None and proc.start == start and not proc.zombie]


def stop_processes(processes: Mapping[int, int], grace: float = 10.0) -> None:
    """SIGTERM each process (PID -> start time), SIGKILL those alive ``grace`` s later; a PID whose
    start time changed belongs to another process by now and is left alone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in _alive(processes):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(processes) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _alive(processes):
            return


def stop_tree(roots: Collection[int], token: str | None = None, grace: float = 10.0) -> None:
    """Stop everything ``roots`` started (see ``owned_processes``), looking again until nothing is
    left: a process may start another while the first ones are stopping. ``roots`` must be
    children not yet waited for (or PIDs known to be current), so that no reused PID is hit."""
    for _ in range(5):
        found = owned_processes(roots, token)
        if not found:
            return
        stop_processes(found, grace)


def _stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop ``process`` (started in its own session), its group and every process it started, the
    SuperLink's SuperExec in a session of its own included; then reap it."""
    if process.poll() is not None:
        return
    stop_tree([process.pid], grace=grace)
    process.wait()


_held: list[int] | None = None  # signals that arrived while cleanup ran; None: raise at once


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    global _held
    if _held is not None:
        _held.append(signum)
        return
    # One stop is enough: what it unwinds (a run recording `interrupted`, processes being stopped)
    # must not be cut short by the next signal, such as a bench pool's terminate() after Ctrl-C.
    _held = []
    raise Interrupted(signum)


# Ctrl-C, `timeout`/`kill`, and a closed terminal (SIGHUP): each must stop what a run started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Interrupted``, so ``finally`` blocks stop what a run started
    (Python's default SIGTERM ends the process at once, leaving every child running); only the
    first one raises, later ones until the block ends are held and dropped. Only the main thread
    may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _held
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in STOP_SIGNALS}
    outermost = previous[signal.SIGINT] is not _raise_interrupted
    outer = _held
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if outermost:  # an inner block leaves a stop it raised held for the outer one's unwinding
            _held = outer  # signals held after the first stop are dropped with it


class _Cleanup:
    """Holds the stop signals while stopping processes and removing folders (a second Ctrl-C must not
    leave half of them behind); one that arrived is raised afterwards, unless an error is already
    on its way out."""

    def __enter__(self) -> None:
        global _held
        self.outer = _held
        if _held is None:
            _held = []

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        global _held
        arrived, _held = _held or [], self.outer
        if self.outer is None and arrived and kind is None and sys.exc_info()[1] is None:
            if signal.getsignal(signal.SIGINT) is _raise_interrupted:
                _held = []  # as _raise_interrupted: the stop raised here unwinds without a second one
            raise Interrupted(arrived[0])


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
    token: str = ""  # CLIPFED_RUN_TOKEN: give it to what else the run starts (see owned_processes)


@contextmanager
def local_superlink(flwr_home: Path, startup_timeout: float = 60.0) -> Iterator[LocalSuperLink]:
    """A simulation SuperLink on a free port, registered as connection ``clipfed-local``; on
    leaving, it and every process it started are stopped, and Ray's temporary folder removed."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log = (flwr_home / "superlink.log").open("ab")
    env = flower_env(flwr_home)
    token = uuid.uuid4().hex
    env[RUN_TOKEN_ENV] = token
    # Ray's socket paths must stay under 107 bytes: keep its temp folder short, and ours.
    ray_tmp = Path(tempfile.mkdtemp(prefix="cf-ray-", dir="/tmp"))
    env.setdefault("RAY_TMPDIR", str(ray_tmp))
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(
            [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db"),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_healthy(f"http://127.0.0.1:{port}/health", process, startup_timeout)
        yield LocalSuperLink(port, process.pid, token)
    finally:
        with _Cleanup():
            stop_tree([process.pid] if process is not None and process.poll() is None else [], token)
            if process is not None:
                process.wait()
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


def _follow(process: subprocess.Popen[bytes], log: Path, timeout: float) -> bool:
    """Wait for ``process``, copying what it writes to ``log`` onto stdout as it comes; False if it
    is still running after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with log.open("rb") as source:
        while True:
            exited = process.poll() is not None
            if text := decoder.decode(source.read()):
                sys.stdout.write(text)
                sys.stdout.flush()
            if exited:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def failure_log_dir(run_config: Mapping[str, Any]) -> Path:
    """Where a failed or interrupted run keeps its logs: ``<out-dir>/<run-name>.logs`` beside the
    run folder (``-2``, ``-3``... once that exists)."""
    out = Path(str(run_config.get("out-dir") or "runs")).expanduser().resolve()
    name = str(run_config.get("run-name") or f"flwr-run-{time.strftime('%Y%m%d-%H%M%S')}")
    candidate, n = out / f"{name}.logs", 1
    while candidate.exists():
        n += 1
        candidate = out / f"{name}.logs-{n}"
    return candidate


def _keep_logs(home: Path, target: Path) -> Path:
    """Copy the run's logs out of ``home`` into ``target`` (``home`` itself if that fails)."""
    try:
        target.mkdir(parents=True)
        for name in LOGS:
            if (home / name).exists():
                shutil.copy2(home / name, target / name)
    except OSError:
        return home
    return target


def federation_config(num_supernodes: int, cpus_per_client: int = 1, gpus_per_client: float = 0.0) -> str:
    """The ``--federation-config`` text of a simulation run: the field names of flwr 1.41's
    ``SimulationConfig`` with ``-`` for ``_``. Ray reserves ``client-resources-num-cpus`` and
    ``client-resources-num-gpus`` (a fraction shares one GPU) for each ClientApp actor, and hides
    every GPU from an actor that asked for none."""
    return (f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client} "
            f"client-resources-num-gpus={float(gpus_per_client)!r}")


def flwr_run_command(app_dir: Path, config_file: Path, federation: str) -> list[str]:
    """``flwr run`` of the app on this module's connection, streaming its logs."""
    return [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(config_file),
            "--federation-config", federation]


def client_gpu_note(gpus_per_client: float, device: str) -> str:
    """Check ``--gpus-per-client`` against this machine and the run's ``device`` before anything
    starts (Ray would otherwise wait forever for a GPU it cannot find, or a ClientApp fail in
    round 1). Returns a note for the user ('' when none): with no GPU asked for, ``device='auto'``
    clients train on the CPU even where CUDA is visible.

    Raises:
        UserError: a negative value, a fraction below Ray's 0.0001 or above 1 (Ray takes whole GPUs
            above 1), more GPUs than visible or any where CUDA is not visible, ``device='cuda...'``
            with no GPU asked for, or ``cuda:N`` beyond the GPUs Ray gives an actor (it renumbers them
            from 0).
    """
    import torch

    flag = f"--gpus-per-client {gpus_per_client:g}"
    if (gpus_per_client < 0 or 0 < gpus_per_client < 1e-4  # Ray's resolution
            or (gpus_per_client > 1 and not float(gpus_per_client).is_integer())):
        raise UserError(f"{flag}: allowed: 0 (no GPU), a fraction in [0.0001, 1] (clients sharing one GPU) "
                        "or a whole number of GPUs")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus_per_client > visible:
        raise UserError(f"{flag}, but this machine has {visible} visible CUDA device(s); allowed: "
                        f"0{f' to {visible}' if visible else ''} (the simulation runs where `clipfed run` runs)")
    if gpus_per_client == 0 and device.startswith("cuda"):
        raise UserError(f"device={device!r} with --gpus-per-client 0: Ray hides every GPU from a ClientApp "
                        "that asked for none; give --gpus-per-client F > 0 (e.g. 0.25: four clients per GPU)")
    index = int(device.partition(":")[2] or 0)
    if gpus_per_client > 0 and index >= max(int(gpus_per_client), 1):
        raise UserError(f"device={device!r} with {flag}: Ray shows each ClientApp only the GPU(s) it assigned "
                        f"it, as cuda:0..cuda:{max(int(gpus_per_client), 1) - 1}; use device='cuda' or 'auto'")
    if gpus_per_client == 0 and device == "auto" and visible:
        return ("note: CUDA is visible but --gpus-per-client is 0, so Ray hides it from the ClientApps "
                "and they train on the CPU (the ServerApp still uses the GPU)")
    return ""


def _run_in(home: Path, app_dir: Path, run_config: Mapping[str, Any], federation: str,
            timeout: float) -> int | None:
    """Start a SuperLink in ``home``, ``flwr run`` the app on it, return the run id once the run
    completed; ``FlowerRunError`` if it did not."""
    with local_superlink(home) as link:
        config_file = write_run_config(home / "run-config.toml", run_config)
        command = flwr_run_command(app_dir, config_file, federation)
        with (home / "flwr-run.log").open("wb") as log:
            cli = subprocess.Popen(command, env={**flower_env(home), RUN_TOKEN_ENV: link.token},
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            finished = _follow(cli, home / "flwr-run.log", timeout)
        finally:
            with _Cleanup():
                stop_tree([cli.pid] if cli.poll() is None else [])
                cli.wait()
        run_id, status = run_status(home)
    if finished and run_id is None and cli.returncode:  # refused before any run existed (a FAB too big, say)
        tail = [line.strip(" │╭╮╰╯─") for line in (home / "flwr-run.log").read_text(errors="replace").splitlines()]
        said = " ".join(line for line in tail[-8:] if line)
        raise FlowerRunError(f"`flwr run` exited with {cli.returncode} and the SuperLink lists no run "
                             f"({status}): {said}")
    if not finished:
        raise FlowerRunError(f"run {run_id} still {status} after {timeout:.0f} s (--timeout)")
    if status != COMPLETED:
        raise FlowerRunError(f"run {run_id} ended as {status!r}, not {COMPLETED!r}")
    return run_id


def flwr_run(
    app_dir: Path,
    run_config: Mapping[str, Any],
    *,
    num_supernodes: int,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    timeout: float = 3600.0,
    flwr_home: Path | None = None,
    log_dir: Path | None = None,
) -> RunOutcome:
    """``flwr run`` the app in simulation and wait; raise ``FlowerRunError`` unless it completed.

    Each ClientApp gets ``cpus_per_client`` CPUs and ``gpus_per_client`` GPUs (``federation_config``;
    check the latter first with ``client_gpu_note``).

    Whatever happens (completion, failure, timeout, SIGINT, SIGTERM), every process the run started
    is stopped and a temporary ``FLWR_HOME`` removed. A failed or interrupted run first copies its
    logs to ``log_dir`` (default: ``failure_log_dir``); the error (``FlowerRunError``, or
    ``Interrupted`` for a signal) names that folder.
    """
    own_home = flwr_home is None
    home = Path(tempfile.mkdtemp(prefix="clipfed-flwr-")) if flwr_home is None else Path(flwr_home)
    started = time.monotonic()
    keep_home = not own_home
    with interruptible():
        try:
            run_id = _run_in(home, app_dir, run_config,
                             federation_config(num_supernodes, cpus_per_client, gpus_per_client), timeout)
        except BaseException as err:
            with _Cleanup():
                kept = _keep_logs(home, log_dir or failure_log_dir(run_config))
                keep_home = keep_home or kept == home
            where = f"; logs kept in {kept} ({', '.join(LOGS)})"
            if isinstance(err, Interrupted):
                raise Interrupted(err.signum, f"{err}; everything the run started is stopped{where}") from None
            if isinstance(err, FlowerRunError):
                raise FlowerRunError(f"{err}{where}") from None
            err.add_note(where.removeprefix("; "))
            raise
        finally:
            if not keep_home:
                with _Cleanup():
                    shutil.rmtree(home, ignore_errors=True)
    return RunOutcome(run_id, COMPLETED, time.monotonic() - started)
