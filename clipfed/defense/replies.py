"""Reading and copying client replies without changing them (what every defense shares)."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import ArrayRecord, Message, RecordDict

from clipfed.flower_internals import with_content
from clipfed.records import metric


def detached(replies: list[Message], keys: Sequence[str] | None = None) -> list[Message]:
    """Shallow copies of ``replies`` whose ArrayRecords are new mappings, for flwr's own rules.

    flwr's FedMedian/FedTrimmedAvg pop arrays out of the replies they aggregate, and ours must
    stay intact for the report; ``keys`` lets flwr's rules see the parameters and not the
    statistics. The arrays themselves are shared, not copied.

    Args:
        replies: The replies to copy.
        keys: The array keys to keep in every ArrayRecord (``parameter_keys``); None keeps all.

    Returns:
        New Messages, in ``replies``' order, with the same metadata and non-array records.
    """
    return [with_content(msg, RecordDict({
        name: ArrayRecord({k: v for k, v in value.items() if keys is None or k in keys})
        if isinstance(value, ArrayRecord) else value
        for name, value in msg.content.items()})) for msg in replies]


def partition_id(msg: Message) -> int:
    """The ``partition-id`` metric of a reply's ``metrics`` record (validated before any defense).

    Raises:
        KeyError: The reply has no ``metrics`` record or no ``partition-id`` in it.
        TypeError: ``metrics`` is not a MetricRecord, or the value is not a number.
    """
    return int(metric(msg.content, "partition-id"))
