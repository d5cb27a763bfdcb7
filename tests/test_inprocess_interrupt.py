"""A run on the in-process engine, or a bench suite, stopped from outside (Ctrl-C, SIGTERM, a closed
terminal) records ``interrupted`` and resumes from its checkpoint; it never reads ``failed`` (a
failed run is not shown as partial) or stays ``running``, and a bench's workers exit with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Message, MessageType
from test_checkpoint import config

from clipfed.engines.inprocess import InProcessGrid, run_inprocess
from clipfed.engines.launch import Interrupted
from clipfed.runs.checkpoint import Checkpoint
from clipfed.runs.results import load_result


class CtrlC(KeyboardInterrupt):
    """Stands for Ctrl-C arriving in the middle of a round."""


def test_ctrl_c_in_process_records_interrupted_and_resumes(fake_data_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    original = InProcessGrid.send_and_receive

    def send_and_receive(self: InProcessGrid, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if any(m.metadata.message_type == MessageType.TRAIN and int(m.content["config"]["server-round"]) == 3
               for m in messages):
            raise CtrlC
        return original(self, messages, timeout=timeout)

    with monkeypatch.context() as patch:
        patch.setattr(InProcessGrid, "send_and_receive", send_and_receive)
        with pytest.raises(CtrlC):
            run_inprocess(config(fake_data_dir, tmp_path, "stopped"))
    stopped = load_result(tmp_path / "stopped")
    assert stopped["status"] == "interrupted" and stopped["finished_at"]
    assert [r["round"] for r in stopped["rounds"]] == [0, 1, 2]
    assert Checkpoint.load(tmp_path / "stopped").server_round == 2
    resumed = load_result(run_inprocess(config(fake_data_dir, tmp_path, "resumed",
                                               **{"resume-from": str(tmp_path / "stopped")})))
    assert resumed["status"] == "completed" and resumed["resumed_from"]["after_round"] == 2


def _wait_for_round(result: Path, process: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["round"] >= 1 for r in _rounds(result)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{result} never recorded round 1"
        time.sleep(0.3)


def _group_gone(pgid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.3)
    return False


@pytest.mark.timeout(400)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_ends_an_inprocess_run_as_interrupted(sig: signal.Signals, fake_data_dir: Path,
                                                            tmp_path: Path) -> None:
    """Python's default SIGTERM used to end the process with the result saying ``running``."""
    keys = (f"num-clients=2 num-malicious=0 num-server-rounds=200 local-steps=1 eval-samples=50 "
            f"partition='iid' data-dir='{fake_data_dir}' out-dir='{tmp_path}' run-name='stopped'")
    process = subprocess.Popen([sys.executable, "-m", "clipfed.cli", "run", "--engine", "inprocess", "-c", keys],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_for_round(tmp_path / "stopped" / "result.json", process)
        while not (tmp_path / "stopped" / "checkpoint.pt").exists():  # round 1 is recorded, then saved
            time.sleep(0.1)
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + sig, err[-2000:]
    assert err.strip().endswith(f"clipfed: interrupted by {sig.name}"), err[-2000:]
    result = load_result(tmp_path / "stopped")
    assert result["status"] == "interrupted" and 1 <= len(result["rounds"]) - 1 < 200
    # a round is recorded, then its checkpoint saved: a stop between the two leaves the one before
    assert Checkpoint.load(tmp_path / "stopped").server_round in (len(result["rounds"]) - 1, len(result["rounds"]) - 2)


def test_interrupted_survives_the_trip_from_a_bench_worker() -> None:
    """A worker sends its run's exception to the bench pickled; one that does not rebuild breaks
    the pool, which then kills the other workers' runs before they can record anything."""
    import pickle

    again = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM)))
    assert isinstance(again, Interrupted) and again.signum == signal.SIGTERM
    assert str(again) == "interrupted by SIGTERM"


BENCH = """
import sys
from pathlib import Path
from clipfed.bench.runner import plan, run_suite
from clipfed.bench.suites import Suite
suite = Suite(name="tiny", description="test", seeds=(0,), pretrain_rounds=1, defenses=("fedavg", "median"),
              attacks=("badnets",), settings={"iid": {"partition": "iid"}},
              base={"num-clients": 3, "num-malicious": 1, "num-server-rounds": 200, "batch-size": 16,
                    "local-steps": 1, "eval-samples": 50, "public-pool-fraction": 0.5,
                    "clipfed-post-steps": 2, "clipfed-probe-size": 50})
run_suite(suite, Path(sys.argv[1]), plan(suite, variants=[]), threads=1, workers=2)
"""


@pytest.mark.timeout(600)
def test_sigterm_to_a_bench_stops_its_workers_and_marks_their_runs_interrupted(
        fake_data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to the whole process group, as `kill -- -PGID` or a job scheduler sends it: the runs
    under way record ``interrupted`` and no worker is left waiting, orphaned, for the next run."""
    out = tmp_path / "suite"
    bench = subprocess.Popen([sys.executable, "-c", BENCH, str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "CLIPFED_DATA_DIR": str(fake_data_dir)})
    try:
        deadline = time.monotonic() + 400
        while not (under_way := [p for p in (out / "runs").glob("iid--*--badnets--s0-*/result.json")
                                 if any(r["round"] >= 1 for r in _rounds(p))]):
            assert bench.poll() is None, bench.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no attacked run reached round 1"
            time.sleep(0.3)
        os.killpg(bench.pid, signal.SIGTERM)
        _, err = bench.communicate(timeout=120)
        assert _group_gone(bench.pid), "a bench worker outlived the bench"
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
    assert bench.returncode != 0 and "Interrupted" in err, err[-2000:]
    statuses = {p.parent.name: load_result(p.parent)["status"] for p in (out / "runs").glob("iid--*--s0-*/result.json")
                if "pretrain" not in p.parent.name}
    assert "interrupted" in statuses.values(), statuses
    assert set(statuses.values()) <= {"interrupted", "completed"}, statuses  # never failed, running or stopped
    for run in under_way:
        assert load_result(run.parent)["status"] == "interrupted"


def _rounds(path: Path) -> list[dict[str, int]]:
    try:
        return list(json.loads(path.read_text())["rounds"])
    except (OSError, json.JSONDecodeError, KeyError):
        return []
