"""Mock Flower Messages built the way a real run builds them (instruction, then reply_to)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from clipfed.flower_internals import server_identity as flower_server_identity
from clipfed.models.state import to_array_record

SERVER_NODE = 0


@pytest.fixture
def server_identity() -> Iterator[None]:
    """Make this process look like a running ServerApp so Messages can be constructed."""
    with flower_server_identity(node_id=SERVER_NODE):
        yield


def instruction(node: int, content: RecordDict | None = None, kind: str = MessageType.TRAIN) -> Message:
    """A message the server sends to ``node``."""
    return Message(content or RecordDict({"config": ConfigRecord({"server-round": 1})}),
                   dst_node_id=node, message_type=kind)


def reply_from(node: int, content: RecordDict, kind: str = MessageType.TRAIN) -> Message:
    """``node``'s reply to a server instruction."""
    return Message(content, reply_to=instruction(node, kind=kind))


def error_from(node: int, reason: str = "boom") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=instruction(node))


def arrays_of(values: dict[str, np.ndarray]) -> ArrayRecord:
    return to_array_record(values)


def train_reply(node: int, pid: int, arrays: dict[str, np.ndarray], examples: int,
                malicious: bool = False, loss: float = 1.0) -> Message:
    metrics = MetricRecord({"num-examples": examples, "train-loss": loss, "partition-id": pid,
                            "is-malicious": int(malicious)})
    return reply_from(node, RecordDict({"arrays": arrays_of(arrays), "metrics": metrics}))
