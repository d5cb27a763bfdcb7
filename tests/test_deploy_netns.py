"""Deployment across hosts: a SuperLink and SuperNodes in separate network namespaces.

Each host is a namespace with its own network stack, joined to a bridge; the ``flwr`` CLI runs on
the SuperLink's host and dials its bridge address. The commands come from ``clipfed.deploy.cluster`` (the
same builders ``docker-compose.yml`` is checked against). Skips where namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Network, netns_unavailable

from clipfed.cli import app_dir
from clipfed.deploy.cluster import (
    SUPERLINK_PORT,
    Processes,
    make_node_keys,
    make_tls,
    register_supernode,
    superexec_command,
    superlink_command,
    supernode_command,
    write_connection,
)
from clipfed.engines.launch import (
    COMPLETED,
    _bin,
    flower_env,
    run_status,
    wait_healthy,
    write_run_config,
)
from clipfed.runs.results import load_result

pytestmark = [pytest.mark.e2e, pytest.mark.deploy]

CONNECTION = "netns"
NODES = 3
MALICIOUS = 2  # partition id of the node started with role=malicious


def run_config(data_dir: Path, out: Path, name: str) -> dict[str, object]:
    return {"num-clients": NODES, "num-malicious": 1, "num-server-rounds": 2, "partition": "iid",
            "batch-size": 16, "data-dir": str(data_dir), "out-dir": str(out), "run-name": name,
            "defense": "clipfed", "public-pool-fraction": 0.5, "clipfed-post-steps": 5,
            "clipfed-probe-size": 50, "round-timeout": 240}


def node_config(pid: int, data_dir: Path) -> dict[str, object]:
    role = "malicious" if pid == MALICIOUS else "benign"
    return {"partition-id": pid, "num-partitions": NODES, "data-dir": str(data_dir), "role": role,
            "num-threads": 1}


@pytest.fixture
def network() -> Iterator[Network]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = Network()
    try:
        yield net
    finally:
        net.close()
        assert not net.leftovers(), "every namespace the test made is deleted"


def flwr_run_in(net: Network, host: str, home: Path, config: dict[str, object], timeout: float) -> str:
    """``flwr run`` on ``host`` against connection ``netns``; the run's final status."""
    config_file = write_run_config(home / "run-config.toml", config)
    command = [*net.prefix(host), _bin("flwr"), "run", str(app_dir()), CONNECTION, "--stream",
               "--run-config", str(config_file)]
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(command, env=flower_env(home), timeout=timeout, check=False)
    return run_status(home, CONNECTION, net.prefix(host))[1]


def cluster_env(home: Path, data_dir: Path, cache: Path) -> dict[str, str]:
    env = flower_env(home)
    env.update(CLIPFED_DATA_DIR=str(data_dir), CLIPFED_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    return env


@pytest.mark.timeout(900)
def test_clipfed_runs_across_namespaces(network: Network, fake_data_dir: Path, tmp_path: Path) -> None:
    """Process isolation, as in docker-compose.yml: a SuperExec beside the SuperLink runs the
    ServerApp, and one beside each SuperNode runs its ClientApps."""
    link_ns = network.add_host("link")
    link = f"{network.hosts['link']}:{SUPERLINK_PORT}"
    home = tmp_path / "flwr-home"
    write_connection(home, CONNECTION, link)
    procs = Processes(tmp_path / "logs", cluster_env(home, fake_data_dir, tmp_path / "cache"))
    try:
        superlink = procs.start("superlink", superlink_command(database=tmp_path / "state.db",
                                                               isolation="process"), link_ns)
        wait_healthy(f"http://{link}/health", superlink, netns=link_ns)
        procs.start("superexec-serverapp", superexec_command(link), link_ns)
        for pid in range(NODES):
            node_ns = network.add_host(f"n{pid}")
            procs.start(f"node{pid}", supernode_command(link, node_config(pid, fake_data_dir),
                                                        isolation="process", host="0.0.0.0"), node_ns)
            procs.start(f"superexec-node{pid}", superexec_command("127.0.0.1:9094"), node_ns)
        status = flwr_run_in(network, "link", home, run_config(fake_data_dir, tmp_path, "plain"), 600)
    finally:
        procs.stop_all()
    assert status == COMPLETED, procs.log("superlink")[-3000:]
    result = load_result(tmp_path / "plain")
    assert result["status"] == "completed" and [r["round"] for r in result["rounds"]] == [0, 1, 2]
    last = result["rounds"][-1]
    assert last["participants"] == [0, 1, 2] and last["malicious"] == [MALICIOUS]
    assert last["defense"]["scores"]["partition"] == [0, 1, 2]
    for process in procs.started.values():
        assert process.poll() is not None, "every process the test started is stopped"


@pytest.mark.timeout(900)
def test_tls_and_supernode_auth_refuse_an_unregistered_node(
        network: Network, fake_data_dir: Path, tmp_path: Path) -> None:
    link_ns = network.add_host("link")
    link = f"{network.hosts['link']}:{SUPERLINK_PORT}"
    tls = make_tls(tmp_path / "certs", [network.hosts["link"], "127.0.0.1", "localhost"])
    home = tmp_path / "flwr-home"
    write_connection(home, CONNECTION, link, root_certificates=tls.ca_cert)
    procs = Processes(tmp_path / "logs", cluster_env(home, fake_data_dir, tmp_path / "cache"))
    try:
        superlink = procs.start("superlink", superlink_command(tls=tls, supernode_auth=True,
                                                               database=tmp_path / "state.db"), link_ns)
        wait_healthy(f"https://{link}/health", superlink, verify=str(tls.ca_cert), netns=link_ns)
        for pid in range(NODES):
            private, public = make_node_keys(tmp_path / "keys", f"node{pid}")
            register_supernode(home, CONNECTION, public, prefix=network.prefix("link"))
            procs.start(f"node{pid}", supernode_command(link, node_config(pid, fake_data_dir),
                                                        root_certificates=tls.ca_cert, private_key=private),
                        network.add_host(f"n{pid}"))
        # A fourth node with a key the SuperLink never saw, claiming a real partition.
        stranger_key, _ = make_node_keys(tmp_path / "keys", "stranger")
        procs.start("stranger", supernode_command(link, node_config(0, fake_data_dir),
                                                  root_certificates=tls.ca_cert, private_key=stranger_key),
                    network.add_host("stranger"))
        status = flwr_run_in(network, "link", home, run_config(fake_data_dir, tmp_path, "tls"), 600)
        stranger_log = procs.log("stranger")
    finally:
        procs.stop_all()
    assert status == COMPLETED, procs.log("superlink")[-3000:]
    result = load_result(tmp_path / "tls")
    assert result["status"] == "completed" and result["rounds"][-1]["participants"] == [0, 1, 2]
    # The SuperLink turned the unknown key away (HTTP 412) and the node gave up activating.
    stranger_ip = network.hosts["stranger"]
    assert "No SuperNode found with the given public key" in procs.log("superlink")
    assert f'{stranger_ip}:' in procs.log("superlink") and "activate-node HTTP/1.1\" 412" in procs.log("superlink")
    assert "Failed to activate SuperNode" in stranger_log, stranger_log[-2000:]
