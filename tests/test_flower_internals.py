"""The Flower internals clipfed relies on (``clipfed.flower_internals``) still behave as assumed.

A Flower upgrade that renames or changes one of them fails here, naming the module to fix,
instead of failing somewhere deep in a run.
"""

from __future__ import annotations

import inspect

import flwr
import numpy as np
import pytest
from flower_mocks import train_reply
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from clipfed import flower_internals
from clipfed.flower_internals import (
    VERIFIED_FLWR,
    aggregate_with,
    assign_message_id,
    construct_messages,
    server_identity,
    with_content,
)
from clipfed.models.state import to_array_record

FIX = "clipfed/flower_internals.py relies on this Flower internal; adapt it to this Flower release"


def test_flower_is_the_release_the_internals_were_verified_on() -> None:
    assert flwr.__version__.startswith(VERIFIED_FLWR + "."), (
        f"flwr {flwr.__version__}: {flower_internals.__name__} was verified on {VERIFIED_FLWR}.x; "
        "run this file's other tests, fix what fails there, then update VERIFIED_FLWR")


def test_server_identity_lets_messages_be_built_and_restores_the_previous_one() -> None:
    for name in ("_run_id", "_task_id", "_node_id"):
        assert hasattr(TaskIdentity, name), f"TaskIdentity.{name} is gone: {FIX}"
    before = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    with server_identity(run_id=7):
        msg = Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
        assert msg.metadata.run_id == 7 and msg.metadata.src_node_id == 0
    assert (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id) == before


def test_with_content_and_assign_message_id_write_what_flower_reads() -> None:
    with server_identity():
        reply = train_reply(3, 0, {"w": np.ones(2, dtype=np.float32)}, 10)
        clone = with_content(reply, RecordDict({"config": ConfigRecord({"x": 1})}))
        assert clone.content["config"]["x"] == 1, f"Message._content: {FIX}"
        assert reply.content["arrays"] is not None and clone.metadata is reply.metadata
        instruction = Message(RecordDict(), dst_node_id=3, message_type=MessageType.TRAIN)
        assign_message_id(instruction, "42")
        assert instruction.metadata.message_id == "42", f"Metadata._message_id: {FIX}"


def test_fedavg_still_builds_one_instruction_per_node() -> None:
    params = list(inspect.signature(FedAvg._construct_messages).parameters)
    assert params == ["self", "record", "node_ids", "message_type"], f"FedAvg._construct_messages: {FIX}"
    with server_identity():
        messages = list(construct_messages(FedAvg(), RecordDict({"config": ConfigRecord()}), [4, 9],
                                           MessageType.TRAIN))
    assert [m.metadata.dst_node_id for m in messages] == [4, 9]


@pytest.mark.parametrize(("rule", "attrs", "expected"), [
    (FedMedian, {}, 2.0),
    (FedTrimmedAvg, {"beta": 0.2}, 2.0),  # trims 1 of 5 from each end: mean of 1, 2, 3
    (Bulyan, {"num_malicious_nodes": 1}, 2.0),  # 7 replies: Multi-Krum keeps 5, then the 3 around the median
])
def test_flwr_rules_run_on_another_strategy_object_reading_only_its_attributes(
        rule: type, attrs: dict[str, object], expected: float) -> None:
    strategy = FedAvg()
    for name, value in attrs.items():
        setattr(strategy, name, value)
    if rule is Bulyan:
        from flwr.serverapp.strategy.multikrum import select_multikrum

        strategy.selection_rule = select_multikrum  # type: ignore[attr-defined]
    with server_identity():
        replies = [train_reply(10 + i, i, {"w": np.full(3, v, dtype=np.float32)}, 10)
                   for i, v in enumerate((0.0, 1.0, 2.0, 3.0, 100.0) if rule is not Bulyan
                                         else (0.0, 1.0, 2.0, 3.0, 4.0, 100.0, 200.0))]
        arrays, _ = aggregate_with(rule, strategy, 1, replies)
    assert arrays is not None, f"{rule.__name__}.aggregate_train on a foreign strategy: {FIX}"
    np.testing.assert_allclose(arrays["w"].numpy(), expected, err_msg=FIX)
    assert to_array_record({"w": arrays["w"].numpy()})["w"].shape == (3,)


def test_random_streams_are_distinct_and_keep_their_values() -> None:
    """Changing a stream's value changes every result drawn from it; two uses sharing one would
    draw correlated numbers (the caption choice once reused the public pool's stream)."""
    from clipfed.streams import Stream

    values = [int(s) for s in Stream]
    assert len(values) == len(set(values))
    assert (Stream.PUBLIC_POOL, Stream.SAMPLING, Stream.CLIENT_TRAINING, Stream.CLIPFED_POST) == (1, 5, 6, 12)
