"""``clipfed run`` leaves nothing behind: on completion, failure, SIGINT and SIGTERM every process
it started is stopped by PID and its temporary folders are removed; failed and interrupted runs
keep their logs where the error message says."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from clipfed.cli import app_dir
from clipfed.engines.launch import (
    RUN_TOKEN_ENV,
    FlowerRunError,
    Interrupted,
    _Cleanup,
    flwr_run,
    interruptible,
    stop_tree,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of a process, None once it is gone; read independently of launch.py."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _running(pid: int, start: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] == start and stat[2] != "Z"


def _descendants(root: int) -> dict[int, int]:
    """PID -> start time of ``root``'s descendants, by parent links."""
    parents = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, (ppid, start, _) in parents.items():
            if ppid == pid and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _with_env(prefix: str) -> list[int]:
    """Live processes with an environment entry that starts with ``prefix`` (``FLWR_HOME=/tmp/x``)."""
    needle = b"\0" + prefix.encode()
    hits = []
    for name in os.listdir("/proc"):
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes() if name.isdigit() else b""
        except OSError:
            continue
        if needle in b"\0" + environ and (stat := _stat(int(name))) is not None and stat[2] != "Z":
            hits.append(int(name))
    return hits


def _kill_left(processes: dict[int, int]) -> None:
    for pid, start in processes.items():
        if _running(pid, start):
            os.kill(pid, signal.SIGKILL)


def _env_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)


def test_stop_tree_stops_descendants_in_sessions_of_their_own() -> None:
    """The SuperLink starts its SuperExec, and Ray its processes, outside the parent's process group:
    killing the group (the old way) left them running."""
    script = (f"import subprocess, sys, time; p = subprocess.Popen({SLEEPER!r}, start_new_session=True); "
              "print(p.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = int(parent.stdout.readline())
    start = _stat(child)[1]
    try:
        stop_tree([parent.pid], grace=5.0)
        parent.wait(timeout=10)
        assert not _running(child, start)
    finally:
        _kill_left({child: start})
        parent.kill()
        parent.wait()


def test_stop_tree_finds_orphans_by_their_token() -> None:
    """A process whose parent died is re-parented to init: no walk from the roots finds it, the
    token in its environment does."""
    token = uuid.uuid4().hex
    script = (f"import subprocess, sys; p = subprocess.Popen({SLEEPER!r}, start_new_session=True, "
              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, RUN_TOKEN_ENV: token},
                         capture_output=True, text=True, check=True)
    orphan = int(out.stdout)
    start = _stat(orphan)[1]
    try:
        assert _running(orphan, start) and _stat(orphan)[0] != os.getpid()
        stop_tree([], token, grace=5.0)
        assert not _running(orphan, start)
    finally:
        _kill_left({orphan: start})


def test_sigterm_raises_and_cleanup_holds_signals_until_it_is_done() -> None:
    with pytest.raises(Interrupted) as caught, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert caught.value.signum == signal.SIGTERM
    done = []
    with pytest.raises(Interrupted) as caught, interruptible(), _Cleanup():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        done.append("cleanup finished")
    assert done == ["cleanup finished"] and caught.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "handlers are restored"


def test_a_closed_terminal_sighup_interrupts_like_ctrl_c() -> None:
    """SIGHUP (the terminal closed) left every process of a run running before."""
    with pytest.raises(Interrupted) as caught, interruptible():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)
    assert caught.value.signum == signal.SIGHUP


def test_only_the_first_stop_signal_raises_until_the_outermost_block_ends() -> None:
    """A second signal (a bench pool's terminate() after a group-wide SIGTERM, a second Ctrl-C) must
    not cut short what the first one unwinds, such as a run recording `interrupted`; nested blocks
    keep it held for the outer one; after the block a stop raises again."""
    unwound = []
    with pytest.raises(Interrupted) as caught, interruptible():
        try:
            with interruptible():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            unwound.append("recorded")
    assert unwound == ["recorded"] and caught.value.signum == signal.SIGTERM
    with pytest.raises(Interrupted), interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)


def tiny_run_config(data_dir: Path, out_dir: Path, name: str, rounds: int = 50) -> dict[str, object]:
    return {"num-clients": 2, "num-malicious": 0, "num-server-rounds": rounds, "local-steps": 1,
            "eval-samples": 50, "partition": "iid", "data-dir": str(data_dir), "out-dir": str(out_dir),
            "run-name": name}


@pytest.mark.e2e
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("sig", "whole_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT-like-ctrl-c"])
def test_an_interrupted_run_leaves_nothing_running(sig: signal.Signals, whole_group: bool,
                                                   fake_data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM as ``timeout`` sends it (to clipfed alone); SIGINT as Ctrl-C does (to the foreground
    process group: clipfed and the ``flwr run`` it started)."""
    config = tiny_run_config(fake_data_dir, tmp_path / "runs", "interrupted")
    overrides = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in config.items())
    stdout = (tmp_path / "stdout").open("w")
    clipfed = subprocess.Popen([sys.executable, "-m", "clipfed.cli", "run", "-c", overrides],
                               stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 400
        while "[clipfed] round   2/" not in (tmp_path / "stdout").read_text():
            assert clipfed.poll() is None, (tmp_path / "stdout").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run did not reach round 2"
            time.sleep(0.5)
        seen = _descendants(clipfed.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    for pid in seen if _running(pid, seen[pid])}
        superlink = next(pid for pid, c in commands.items() if "flower-superlink" in c)
        assert any("raylet" in c for c in commands.values()), commands  # Ray is up: the machinery runs
        assert any("flwr-simulation" in c for c in commands.values()), commands
        env = _env_of(superlink)
        home, ray_tmp = Path(env["FLWR_HOME"]), Path(env["RAY_TMPDIR"])
        assert home.is_dir() and ray_tmp.is_dir()

        if whole_group:
            os.killpg(clipfed.pid, sig)
        else:
            clipfed.send_signal(sig)
        _, err = clipfed.communicate(timeout=90)

        assert clipfed.returncode == 128 + sig, err
        left = {pid: commands.get(pid, "?") for pid, start in seen.items() if _running(pid, start)}
        assert not left, f"still running after clipfed exited: {left}"
        assert not _with_env(f"FLWR_HOME={home}\0"), "a process started after the snapshot is still running"
        assert not home.exists() and not ray_tmp.exists()
        match = re.search(r"logs kept in (\S+) ", err)
        assert err.startswith(f"clipfed: interrupted by {sig.name}") and match, err
        logs = Path(match.group(1))
        assert logs == tmp_path / "runs" / "interrupted.logs"
        assert "[clipfed] round   2/" in (logs / "flwr-run.log").read_text()
        assert "Starting Flower SuperLink" in (logs / "superlink.log").read_text()
        result = json.loads((tmp_path / "runs" / "interrupted" / "result.json").read_text())
        assert result["status"] == "interrupted" and result["finished_at"], "a stopped run must not read 'running'"
    finally:
        if clipfed.poll() is None:
            clipfed.kill()
            clipfed.wait()
        _kill_left(seen)
        stdout.close()


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_failed_run_keeps_its_logs_and_nothing_else(fake_data_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose ServerApp fails (no CIFAR-10 where data-dir points): the error names the kept
    logs, which hold the ServerApp's error; the temporary FLWR_HOME is gone, no process is left."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where flwr_run makes its FLWR_HOME
    (tmp_path / "empty").mkdir()
    config = tiny_run_config(tmp_path / "empty", tmp_path / "runs", "failing", rounds=2)
    with pytest.raises(FlowerRunError) as caught:
        flwr_run(app_dir(), config, num_supernodes=2, timeout=300)
    message = str(caught.value)
    logs = tmp_path / "runs" / "failing.logs"
    assert "finished:failed" in message and f"logs kept in {logs} " in message, message
    assert "no CIFAR-10 found under" in (logs / "superlink.log").read_text() + (logs / "flwr-run.log").read_text()
    assert list(temp.iterdir()) == [], "the temporary FLWR_HOME is removed"
    assert not _with_env(f"FLWR_HOME={temp}/"), "no process is left"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_run_flwr_refuses_to_start_says_why(fake_data_dir: Path, tmp_path: Path) -> None:
    """``flwr run`` failing before any run exists (here: a FAB over Flower's 10 MB limit) is an
    error that quotes Flower's reason, not a run of unknown status."""
    app = tmp_path / "app"
    (app / "clipfed").mkdir(parents=True)
    (app / "pyproject.toml").write_text((app_dir() / "pyproject.toml").read_text())
    noise = os.urandom(12 * 2**20).hex()  # incompressible enough to stay over 10 MB zipped
    (app / "clipfed" / "bulk.py").write_text(f"# {noise}\n")
    config = tiny_run_config(fake_data_dir, tmp_path / "runs", "too-big", rounds=1)
    with pytest.raises(FlowerRunError) as caught:
        flwr_run(app, config, num_supernodes=2, timeout=120)
    message = str(caught.value)
    assert "`flwr run` exited with 1 and the SuperLink lists no run" in message, message
    assert "FAB size exceeds maximum" in message, message
