"""Which DBA part a node's attacker stamps: distinct attackers, distinct parts, in deployment too."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from clipfed.app.client_app import NodeRole
from clipfed.attacks import create_attack
from clipfed.config import RunConfig
from clipfed.data import malicious_clients
from clipfed.deploy.cli import local_node_config

CFG = RunConfig.from_flower({"num-clients": 8, "num-malicious": 2, "attack": "dba", "dba-parts": 4})


def role(pid: int, **node: object) -> NodeRole:
    context = Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 8, **node},
                      state=RecordDict(), run_config=CFG.to_flower())
    return NodeRole.from_context(context, CFG)


def part(rank: int) -> np.ndarray:
    return create_attack(CFG).data.part_mask(rank, 32, 32)


def test_seeded_attackers_in_simulation_stamp_distinct_parts() -> None:
    ranks = [role(pid).malicious_rank for pid in sorted(malicious_clients(CFG))]
    assert ranks == [0, 1]


def test_deployed_attackers_outside_the_seeded_set_stamp_distinct_parts() -> None:
    outside = [pid for pid in range(8) if pid not in malicious_clients(CFG)][:2]
    first, second = (role(pid, role="malicious") for pid in outside)
    assert first.malicious and second.malicious
    assert not np.array_equal(part(first.malicious_rank), part(second.malicious_rank))


def test_malicious_rank_in_node_config_picks_the_part() -> None:
    assert role(5, role="malicious", **{"malicious-rank": 2}).malicious_rank == 2
    assert role(5, role="malicious", **{"malicious-rank": "3"}).malicious_rank == 3
    for bad in (-1, "two", True, 1.5):
        with pytest.raises(ValueError, match="malicious-rank"):
            role(5, role="malicious", **{"malicious-rank": bad})


def test_deploy_local_gives_its_attackers_distinct_ranks() -> None:
    nodes = [local_node_config(pid, 8, [1, 5, 6]) for pid in range(8)]
    assert [n.get("malicious-rank") for n in nodes] == [None, 0, None, None, None, 1, 2, None]
    assert [n["role"] for n in nodes].count("malicious") == 3
