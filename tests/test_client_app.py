"""The ClientApp handlers, called directly with a Context and mock Messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flower_mocks import instruction, server_identity  # noqa: F401
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, RecordDict

from clipfed.app.client_app import NodeRole, query, train
from clipfed.config import RunConfig
from clipfed.data import malicious_clients
from clipfed.models import create_model

pytestmark = pytest.mark.usefixtures("server_identity")


def run_config(data_dir: Path, **overrides: object) -> dict:
    base = {"num-clients": 4, "num-malicious": 1, "data-dir": str(data_dir), "public-pool-fraction": 0.1,
            "partition": "iid", "batch-size": 16}
    return RunConfig.from_flower({**base, **overrides}).to_flower()


def context(pid: int, config: dict, **node: object) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 4, **node},
                   state=RecordDict(), run_config=config)


def train_message(pid: int, server_round: int = 1) -> object:
    torch.manual_seed(0)
    arrays = ArrayRecord(create_model("cnn", 10).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return instruction(100 + pid, content)


def test_benign_client_trains_and_reports_its_role(fake_data_dir: Path) -> None:
    config = run_config(fake_data_dir)
    benign = next(p for p in range(4) if p not in malicious_clients(RunConfig.from_flower(config)))
    reply = train(train_message(benign), context(benign, config, **{"num-threads": 1}))
    metrics = reply.content["metrics"]
    assert metrics["partition-id"] == benign and metrics["is-malicious"] == 0
    assert metrics["num-examples"] == 90  # (400 - 40 pool) / 4 clients
    assert metrics["poisoned-examples"] == 0 and np.isfinite(metrics["train-loss"])
    before = create_model("cnn", 10).state_dict()
    after = reply.content["arrays"].to_torch_state_dict()
    assert set(after) == set(before)
    assert any(not torch.equal(after[k], train_message(benign).content["arrays"].to_torch_state_dict()[k])
               for k in after), "training changed nothing"


def test_a_client_trains_with_its_own_threads_and_leaves_the_process_count_as_it_was(
        fake_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the in-process engine the ServerApp shares the client's process: a count a client
    left behind would decide the server's float sums (its evaluation, CLIP-Fed's step)."""
    import clipfed.app.client_app as client_app

    seen: list[int] = []
    original = client_app.train_local

    def recording_train_local(*args: object, **kwargs: object) -> float:
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client_app, "train_local", recording_train_local)
    config = run_config(fake_data_dir, **{"local-steps": 1})
    previous = torch.get_num_threads()
    node_threads = 2 if previous == 1 else 1
    train(train_message(0), context(0, config, **{"num-threads": node_threads}))
    assert seen == [node_threads], "the client trains with the node's num-threads"
    assert torch.get_num_threads() == previous, "and restores the process's count"


def test_local_steps_caps_the_sgd_steps_of_a_round(fake_data_dir: Path) -> None:
    """90 examples in batches of 16 are 6 steps an epoch; ``local-steps=2`` stops after 2."""
    calls: list[int] = []
    original = torch.optim.SGD.step

    def counting_step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)

    config = run_config(fake_data_dir, **{"num-malicious": 0, "local-epochs": 2})
    capped = run_config(fake_data_dir, **{"num-malicious": 0, "local-epochs": 2, "local-steps": 2})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", counting_step)
        train(train_message(0), context(0, config))
        assert len(calls) == 12
        calls.clear()
        reply = train(train_message(0), context(0, capped))
        assert len(calls) == 2
    assert reply.content["metrics"]["num-examples"] == 90  # FedAvg still weighs by the shard's size


def test_attackers_train_attack_local_steps_benign_clients_local_steps(fake_data_dir: Path) -> None:
    """8 attacker steps need a second pass over 6 batches; benign clients keep their 2 steps."""
    calls: list[int] = []
    original = torch.optim.SGD.step

    def counting_step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)

    config = run_config(fake_data_dir, **{"local-steps": 2, "attack-local-steps": 8})
    attacker = next(iter(malicious_clients(RunConfig.from_flower(config))))
    benign = next(p for p in range(4) if p != attacker)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.SGD, "step", counting_step)
        train(train_message(attacker), context(attacker, config))
        assert len(calls) == 8
        calls.clear()
        train(train_message(benign), context(benign, config))
        assert len(calls) == 2


def test_malicious_client_poisons_from_the_start_round(fake_data_dir: Path) -> None:
    config = run_config(fake_data_dir, **{"attack-start-round": 2, "poison-rate": 0.5})
    attacker = next(iter(malicious_clients(RunConfig.from_flower(config))))
    early = train(train_message(attacker, 1), context(attacker, config)).content["metrics"]
    assert early["is-malicious"] == 0 and early["poisoned-examples"] == 0
    late = train(train_message(attacker, 2), context(attacker, config)).content["metrics"]
    assert late["is-malicious"] == 1 and late["poisoned-examples"] == 45


def test_malicious_client_acts_only_inside_the_attack_window(fake_data_dir: Path) -> None:
    config = run_config(fake_data_dir, **{"attack-start-round": 2, "attack-end-round": 3, "local-steps": 1})
    attacker = next(iter(malicious_clients(RunConfig.from_flower(config))))
    acted = [train(train_message(attacker, rnd), context(attacker, config)).content["metrics"]["is-malicious"]
             for rnd in (1, 2, 3, 4)]
    assert acted == [0, 1, 1, 0]


def test_training_is_reproducible(fake_data_dir: Path) -> None:
    config = run_config(fake_data_dir)
    first = train(train_message(0), context(0, config)).content["arrays"].to_torch_state_dict()
    second = train(train_message(0), context(0, config)).content["arrays"].to_torch_state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_node_config_role_overrides_the_seed(fake_data_dir: Path) -> None:
    cfg = RunConfig.from_flower(run_config(fake_data_dir, **{"num-malicious": 0}))
    assert NodeRole.from_context(context(2, cfg.to_flower(), role="malicious"), cfg).malicious
    assert not NodeRole.from_context(context(2, cfg.to_flower()), cfg).malicious
    with pytest.raises(ValueError, match="role='evil'; allowed: benign, malicious"):
        NodeRole.from_context(context(2, cfg.to_flower(), role="evil"), cfg)


def test_partition_count_mismatch_is_a_clear_error(fake_data_dir: Path) -> None:
    cfg = RunConfig.from_flower(run_config(fake_data_dir))
    bad = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 10},
                  state=RecordDict(), run_config=cfg.to_flower())
    with pytest.raises(ValueError, match="num-partitions=10 does not fit num-clients=4"):
        NodeRole.from_context(bad, cfg)


def test_query_reports_the_partition(fake_data_dir: Path) -> None:
    reply = query(instruction(103, RecordDict(), MessageType.QUERY), context(3, run_config(fake_data_dir)))
    assert reply.content["metrics"]["partition-id"] == 3
