"""The ClientApp: local SGD on the node's shard; a malicious node poisons it first.

The role comes from the node config (``role = "malicious"`` in deployment, with the node's own
attack settings and ``data-dir`` if it wants) or, in simulation, from the seed (``num-malicious``
partition ids drawn by ``malicious_clients``). The reply reports
``partition-id`` and ``is-malicious`` so experiments can score detection; no defense reads them.

Training runs on the node's ``device`` (its node config's, else the run's: ``auto`` is CUDA when
the node sees one); the reply's arrays are copied back to the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clipfed.attacks import create_attack
from clipfed.attacks.base import AttackContext
from clipfed.checks import load_node_run_config
from clipfed.config import LOCAL_DATA_KEY, RunConfig, node_identity_problems
from clipfed.data import load_federated, malicious_clients
from clipfed.data.local import load_local_images
from clipfed.devices import place, resolve_device, torch_threads
from clipfed.models import create_model
from clipfed.models.state import buffer_names, to_array_record
from clipfed.records import array_record, config_record, number
from clipfed.streams import Stream, stream_rng
from clipfed.training import LocalSchedule, train_local

app = ClientApp()
MEMORY = "attack-memory"  # the node-state record an attacker keeps across rounds



@dataclass(frozen=True)
class NodeRole:
    """Which shard this node trains on, whether it attacks, and its rank among attackers.

    The rank picks the part of a distributed trigger (DBA part ``rank mod dba-parts``) this
    attacker stamps, so distinct attackers need distinct ranks. Node config ``malicious-rank``
    sets it; else a node whose node config sets ``role`` (deployment, where the seeded set does not
    decide who attacks) takes its partition id; else (simulation) its index among the seeded
    attackers.
    """

    partition_id: int
    malicious: bool
    malicious_rank: int = 0

    @classmethod
    def from_context(cls, context: Context, cfg: RunConfig) -> NodeRole:
        node = context.node_config
        if "partition-id" not in node:
            raise ValueError("node config lacks partition-id; start the SuperNode with "
                             "--node-config 'partition-id=N num-partitions=M'")
        pid = int(node["partition-id"])
        partitions = int(node.get("num-partitions", cfg.num_clients))
        if partitions != cfg.num_clients or not 0 <= pid < cfg.num_clients:
            raise ValueError(
                f"node config partition-id={pid} num-partitions={partitions} does not fit "
                f"num-clients={cfg.num_clients}: use num-supernodes={cfg.num_clients}"
            )
        if problems := node_identity_problems(node):
            raise ValueError("node config " + "; ".join(problems))
        role = str(node.get("role", ""))
        attackers = sorted(malicious_clients(cfg))
        malicious = role == "malicious" if role else pid in attackers
        if "malicious-rank" in node:
            return cls(pid, malicious, int(node["malicious-rank"]))
        if role:
            return cls(pid, malicious, pid)
        return cls(pid, malicious, attackers.index(pid) if pid in attackers else 0)


def _threads(context: Context) -> int:
    """The CPUs this client was given: node config ``num-threads``, else OMP_NUM_THREADS, else 1."""
    return int(context.node_config.get("num-threads", os.environ.get("OMP_NUM_THREADS", 1)))


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for reproducible sampling)."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)


def attack_context(context: Context, cfg: RunConfig, global_arrays: ArrayRecord, server_round: int,
                   malicious_rank: int, images: np.ndarray, labels: np.ndarray) -> AttackContext:
    """What this attacker knows this round: the global model's trainable parameters (not the
    BatchNorm statistics), its memory from earlier rounds (the node's state) and its own clean
    shard (uint8 (N, H, W, C) ``images``, int (N,) ``labels``, before poisoning)."""
    buffers = buffer_names(cfg.model, cfg.num_classes)
    params = {k: v.numpy() for k, v in global_arrays.items() if k not in buffers}
    memory_record = context.state.get(MEMORY, ArrayRecord())
    assert isinstance(memory_record, ArrayRecord)  # only ever set to one, in train()
    return AttackContext(server_round, malicious_rank, params, {k: v.numpy() for k, v in memory_record.items()},
                         clean_images=images, clean_labels=labels)


def node_run_config(context: Context) -> RunConfig:
    """The run config, with what this node's ``--node-config`` sets for itself on top."""
    return load_node_run_config(context.run_config, context.node_config)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of local training, benign or malicious, with the CPUs this client was given; the
    process's thread count is restored afterwards (under the in-process engine the ServerApp shares
    the process, and its evaluation must not run with a client's count)."""
    with torch_threads(_threads(context)):
        return _train(msg, context)


def _train(msg: Message, context: Context) -> Message:
    cfg = node_run_config(context)
    role = NodeRole.from_context(context, cfg)
    server_round = int(number(config_record(msg.content), "server-round"))

    if LOCAL_DATA_KEY in context.node_config:  # the node's own folder (checked in node_run_config)
        shard = load_local_images(str(context.node_config[LOCAL_DATA_KEY]), cfg.dataset)
    else:
        train_set, _, split = load_federated(cfg)
        shard = train_set.subset(split.clients[role.partition_id])
    images, labels = shard.images, shard.labels
    attack = create_attack(cfg)
    attacking = role.malicious and attack is not None and cfg.attacks_in(server_round)

    device = resolve_device(cfg.device)  # the node config's device wins (load_node_run_config)
    model = create_model(cfg.model, cfg.num_classes)
    global_arrays = array_record(msg.content)
    model.load_state_dict(global_arrays.to_torch_state_dict())
    place(model, device, cfg.amp)  # before the attack parts see it: their hooks keep tensors on its device
    generator = torch.Generator().manual_seed(
        int(stream_rng(cfg.seed, Stream.CLIENT_TRAINING, server_round, role.partition_id, 1)
            .integers(2**62))
    )
    torch.manual_seed(int(generator.initial_seed()))
    schedule, hooks, poisoned = LocalSchedule.benign(cfg), None, 0
    if attacking:
        assert attack is not None
        ctx = attack_context(context, cfg, global_arrays, server_round, role.malicious_rank, images, labels)
        attack.data.prepare(model, images, labels, ctx)
        attack.training.prepare(model, ctx)
        rng = stream_rng(cfg.seed, Stream.CLIENT_TRAINING, server_round, role.partition_id)
        result = attack.data.poison(images, labels, rng, role.malicious_rank)
        images, labels, poisoned = result.images, result.labels, int(result.poisoned.sum())
        schedule = attack.training.schedule(schedule, len(labels))
        hooks = attack.training.hooks(model, ctx)
    loss = train_local(
        model, images, labels,
        epochs=schedule.epochs, batch_size=cfg.batch_size, lr=schedule.lr, momentum=schedule.momentum,
        weight_decay=schedule.weight_decay, generator=generator, max_steps=schedule.max_steps, hooks=hooks,
        device=device, amp=cfg.amp, augment=cfg.augment,
    )
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if attacking:
        assert attack is not None
        # Update parts rewrite the trainable parameters; BatchNorm statistics stay as trained.
        state.update(attack.update.craft({k: state[k] for k in ctx.global_params}, ctx))
        context.state[MEMORY] = to_array_record(ctx.memory)
    metrics = MetricRecord({
        "num-examples": len(labels),
        "train-loss": loss,
        "partition-id": role.partition_id,
        "is-malicious": int(attacking),
        "poisoned-examples": poisoned,
    })
    arrays = to_array_record(state)
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
