"""Every Flower internal clipfed relies on, in one place (verified against flwr 1.41).

Flower's public API has no way to do these few things, so clipfed reaches into private names;
``tests/test_flower_internals.py`` checks each of them and fails loudly, naming this module, on a
Flower upgrade that changes one:

- ``server_identity``: act as a running ServerApp (``TaskIdentity``), so ``Message`` objects can
  be built outside a SuperLink-managed process (the in-process engine, bench-cost, tests).
- ``with_content``: a shallow copy of a reply with other content (``Message`` has no setter).
- ``assign_message_id``: the id a SuperLink would give a pushed message (the in-process grid).
- ``construct_messages``: FedAvg's own instruction builder (``_construct_messages``).
- ``aggregate_with``: run flwr's FedMedian/FedTrimmedAvg/Bulyan aggregation on our strategy
  object, which carries the attributes that rule reads (``beta``, ``num_malicious_nodes``, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore.task_identity import TaskIdentity

VERIFIED_FLWR = "1.41"
SERVER_NODE_ID = 0


@contextmanager
def server_identity(run_id: int = 1, node_id: int = SERVER_NODE_ID) -> Iterator[None]:
    """Make this process look like a running ServerApp while the block runs; restored after."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = run_id, 1, node_id
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def with_content(msg: Message, content: RecordDict) -> Message:
    """A shallow copy of ``msg`` (same metadata) holding ``content``."""
    clone = copy.copy(msg)
    clone.__dict__["_content"] = content
    return clone


def assign_message_id(msg: Message, message_id: str) -> None:
    """Give a pushed message the id a SuperLink would (replies point back to it)."""
    msg.metadata.__dict__["_message_id"] = message_id


def construct_messages(strategy: FedAvg, record: RecordDict, node_ids: list[int],
                       message_type: str) -> Iterable[Message]:
    """FedAvg's builder of one instruction per node, carrying ``record``."""
    return strategy._construct_messages(record, node_ids, message_type)


def aggregate_with(rule: type[Strategy], strategy: Strategy, server_round: int,
                   replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """flwr's ``rule.aggregate_train`` run on ``strategy`` (which must carry the attributes the
    rule reads). flwr's rules pop arrays out of the replies they get: pass copies."""
    return rule.aggregate_train(strategy, server_round, replies)
