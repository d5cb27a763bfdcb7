"""``AggregationReport``: what one round's aggregation did, in partition ids.

A defense fills it; the run records (``runs.results``) write it and score detection from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AggregationReport:
    """What one round's aggregation did, in partition ids (never node ids).

    ``DefenseStrategy.aggregate_train`` fills every field but ``details``, which belongs to the
    defense (through ``DefenseStrategy.details``); the run record writes it as JSON, so it holds
    JSON-serialisable values only.

    Attributes:
        server_round: The round number (1-based).
        participants: Partitions whose reply passed validation, sorted.
        malicious: Those of ``participants`` whose reply says ``is-malicious`` (the ground truth
            detection is scored against; the defense never reads it).
        excluded: Those of ``participants`` the defense did not keep (``select``), sorted.
        rejected: ``{"node", "partition", "reason"}`` per reply refused before any defense saw it
            (malformed, non-finite, a second reply for one partition, ...).
        missing: Sampled partitions with no reply in time, or an error reply.
        offline: Partitions not sampled because their node had disconnected.
        refused: ``{"node", "partition", "reason"}`` per node whose partition claim was refused.
        server_seconds: Wall-clock seconds of the server's aggregation this round (validation,
            ``select``, ``combine``), by ``time.perf_counter``.
        details: Defense-specific values: scores, weights, timings, why a round was skipped.
    """

    server_round: int
    participants: list[int] = field(default_factory=list)
    malicious: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    rejected: list[dict[str, object]] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)  # sampled; no reply in time, or an error reply
    offline: list[int] = field(default_factory=list)  # not sampled: their node had disconnected
    refused: list[dict[str, object]] = field(default_factory=list)  # nodes whose partition claim was refused
    server_seconds: float = 0.0
    details: dict[str, object] = field(default_factory=dict)  # defense-specific: scores, timings

    def detection(self) -> dict[str, int]:
        """Detection as a confusion matrix: excluded (predicted) against malicious (truth).

        Returns:
            ``{"tp", "fp", "fn", "tn"}``: counts over this round's participants (excluded and
            malicious; excluded and benign; kept and malicious; kept and benign).
        """
        excluded, malicious = set(self.excluded), set(self.malicious)
        benign = set(self.participants) - malicious
        return {
            "tp": len(excluded & malicious),
            "fp": len(excluded & benign),
            "fn": len(malicious - excluded),
            "tn": len(benign - excluded),
        }
