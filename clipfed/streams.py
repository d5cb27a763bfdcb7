"""The random streams of a run, in one enum: every seeded draw is ``stream_rng(seed, Stream.X, ...)``.

numpy's ``default_rng([seed, stream, *keys])`` gives statistically independent generators for
distinct entropy lists, so two uses of randomness stay independent as long as their streams
differ. Keeping the ids here is what makes that checkable: a new use takes a new member (the
values are fixed forever, since they decide every result; a test checks they are unique).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    PUBLIC_POOL = 1  # the server's public pool held out of the train split
    LONG_TAIL = 2  # CIFAR-10-LT's per-class subsampling
    IID_SPLIT = 3  # the IID partition's shuffle
    ROLES = 4  # which partitions are malicious
    SAMPLING = 5  # the clients each round trains
    CLIENT_TRAINING = 6  # a client's poisoning draw and SGD order, per round and partition
    SYNTH_POOL = 7  # which public-pool images the synthesis pipeline labels
    CLIPFED_PROBE = 11  # CLIP-Fed's scoring probe
    CLIPFED_POST = 12  # CLIP-Fed's post-aggregation batches
    FLTRUST_ROOT = 13  # FLTrust's root-set draw
    CAPTIONS = 14  # template captions per class
    TRIGGER_REDERIVATION = 15  # the server's re-derivation of a learned trigger: its pool images, per-round order
    AWARE_PROBE = 21  # the clipfed-aware attacker's own probe: its images, copies and batches, per round
    GUARD_PROBE = 77  # the teacher guard's probe draw


def stream_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    """The generator of ``stream`` for ``seed`` (and e.g. round, partition ``keys``)."""
    return np.random.default_rng([seed, int(stream), *keys])
