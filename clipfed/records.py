"""Typed access to the records that clipfed's messages carry.

flwr types ``RecordDict[key]`` as ``ArrayRecord | MetricRecord | ConfigRecord`` and a record's
values as the union of every value type. These helpers narrow them to what clipfed puts there,
and raise ``TypeError`` naming the key when a message holds something else (a missing key still
raises ``KeyError``, as plain indexing does).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict


def array_record(records: RecordDict, key: str = "arrays") -> ArrayRecord:
    record = records[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"record {key!r} is a {type(record).__name__}, not an ArrayRecord")
    return record


def metric_record(records: RecordDict, key: str = "metrics") -> MetricRecord:
    record = records[key]
    if not isinstance(record, MetricRecord):
        raise TypeError(f"record {key!r} is a {type(record).__name__}, not a MetricRecord")
    return record


def config_record(records: RecordDict, key: str = "config") -> ConfigRecord:
    record = records[key]
    if not isinstance(record, ConfigRecord):
        raise TypeError(f"record {key!r} is a {type(record).__name__}, not a ConfigRecord")
    return record


def number(record: MetricRecord | ConfigRecord, key: str, default: int | float | None = None) -> int | float:
    """The scalar ``record[key]`` as stored (a bool counts as an int); ``default`` when the key is
    missing and a default is given."""
    if default is not None and key not in record:
        return default
    value = record[key]
    if not isinstance(value, int | float):
        raise TypeError(f"{key!r} is {value!r}, not a number")
    return value


def metric(content: RecordDict, name: str, default: int | float | None = None) -> int | float:
    """The scalar metric ``name`` of the ``metrics`` MetricRecord."""
    return number(metric_record(content), name, default)
