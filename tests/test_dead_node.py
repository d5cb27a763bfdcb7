"""A SuperNode killed in the middle of a run: the run goes on and the result says who was missing.

Deployment engine on loopback: a SuperLink and three SuperNodes as separate processes. After
round 1 is recorded, node 2's process group is killed; rounds 2 and 3 proceed with the others.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from clipfed.cli import app_dir
from clipfed.deploy.cluster import (
    Processes,
    superlink_command,
    supernode_command,
    write_connection,
)
from clipfed.engines.launch import (
    COMPLETED,
    _bin,
    flower_env,
    free_port,
    run_status,
    wait_healthy,
    write_run_config,
)
from clipfed.runs.results import RESULT_FILE, load_result

pytestmark = [pytest.mark.e2e, pytest.mark.deploy]

CONNECTION = "loopback"
NODES, VICTIM, ROUNDS = 3, 2, 3


def rounds_done(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / RESULT_FILE).read_text())["rounds"]) - 1
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.timeout(900)
def test_a_node_dying_mid_run_is_recorded_and_the_run_completes(fake_data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    link = f"127.0.0.1:{port}"
    home = tmp_path / "flwr-home"
    write_connection(home, CONNECTION, link)
    env = flower_env(home)
    env.update(CLIPFED_DATA_DIR=str(fake_data_dir), CLIPFED_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    procs = Processes(tmp_path / "logs", env)
    config = {"num-clients": NODES, "num-malicious": 1, "num-server-rounds": ROUNDS, "partition": "iid",
              "batch-size": 16, "data-dir": str(fake_data_dir), "out-dir": str(tmp_path), "run-name": "faulty",
              "round-timeout": 60}
    try:
        superlink = procs.start("superlink", superlink_command(host="127.0.0.1", port=port))
        wait_healthy(f"http://{link}/health", superlink)
        for pid in range(NODES):
            procs.start(f"node{pid}", supernode_command(link, {"partition-id": pid, "num-partitions": NODES,
                                                               "num-threads": 1}, port=free_port()))
        command = [_bin("flwr"), "run", str(app_dir()), CONNECTION, "--stream",
                   "--run-config", str(write_run_config(tmp_path / "run.toml", config))]
        run = subprocess.Popen(command, env=flower_env(home), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 400
        while rounds_done(tmp_path / "faulty") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rounds_done(tmp_path / "faulty") >= 1, procs.log("superlink")[-3000:]
        procs.stop(f"node{VICTIM}")  # the node dies between rounds 1 and 2
        run.wait(timeout=600)
        status = run_status(home, CONNECTION)[1]
    finally:
        procs.stop_all()
    assert status == COMPLETED, procs.log("superlink")[-3000:]
    result = load_result(tmp_path / "faulty")
    assert result["status"] == "completed" and [r["round"] for r in result["rounds"]] == [0, 1, 2, 3]
    first, later = result["rounds"][1], result["rounds"][2:]
    assert first["participants"] == [0, 1, 2] and first["missing"] == []
    for entry in later:
        gone = set(entry["missing"]) | set(entry["offline"])
        assert gone == {VICTIM}, entry
        assert entry["participants"] == [0, 1]
