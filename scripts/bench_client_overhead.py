"""Images/s of one client's local training through the ClientApp handler vs a bare torch loop.

Both do the same work (same shard, model, epochs, batch size, one thread); the ratio is what the
framework path (config validation, role, record conversion, poisoning check) costs on top.
Run: ``make bench-overhead`` (uses $CLIPFED_DATA_DIR, real CIFAR-10).
"""

from __future__ import annotations

import argparse
import time

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)

from clipfed.app.client_app import train
from clipfed.checks import load_run_config
from clipfed.data import load_federated
from clipfed.flower_internals import server_identity
from clipfed.models import create_model
from clipfed.training import train_local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-clients", type=int, default=20)
    parser.add_argument("--partition-id", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(1)
    cfg = load_run_config({"num-clients": args.num_clients, "num-malicious": 0, "batch-size": 64})
    train_set, _, split = load_federated(cfg)  # warm the data cache for both paths
    shard = train_set.subset(split.clients[args.partition_id])
    n = len(shard)

    context = Context(run_id=1, node_id=1, node_config={"partition-id": args.partition_id,
                      "num-partitions": args.num_clients, "num-threads": 1},
                      state=RecordDict(), run_config=cfg.to_flower())
    initial = create_model(cfg.model, cfg.num_classes).state_dict()

    def via_clientapp() -> None:
        content = RecordDict({"arrays": ArrayRecord(initial),
                              "config": ConfigRecord({"server-round": 1})})
        train(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context)

    def bare_loop() -> None:
        model = create_model(cfg.model, cfg.num_classes)
        model.load_state_dict(initial)
        train_local(model, shard.images, shard.labels, epochs=cfg.local_epochs,
                    batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, generator=torch.Generator().manual_seed(0))

    rates = {}
    for name, fn in (("bare torch loop", bare_loop), ("ClientApp train()", via_clientapp)):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rates[name] = n * cfg.local_epochs / min(times)
    print(f"shard: partition {args.partition_id} of {args.num_clients}, {n} images, "
          f"model {cfg.model}, batch {cfg.batch_size}, 1 thread")
    for name, rate in rates.items():
        print(f"{name:<20} {rate:8.0f} img/s")
    print(f"overhead ratio (bare / ClientApp): {rates['bare torch loop'] / rates['ClientApp train()']:.3f}")


if __name__ == "__main__":
    with server_identity():  # the script builds Messages as a server would
        main()
