"""Replay CLIP-Fed's exclusion rule on the scores a run recorded: what other signals, history
weights and thresholds would have excluded, round by round, with the run's own detection metrics.

Every CLIP-Fed round records all five signals per client (``details["scores"]`` in result.json),
so another rule's exclusions can be recomputed without training anything, with the strategy's own
``combine`` and ``running_scores``. What a replay cannot show is the rounds after a different
exclusion: the run's later models came from its own exclusions, so a replayed rule is judged on
the run's trajectory, not its own. A rule chosen by replay is then measured in a run of its own.

Detection is pooled as in ``clipfed.bench.durable``: precision, recall and F1 over the rounds in
which a sampled client attacked; the false-positive rate over the benign clients of the attack-free
rounds; only the rounds that were scored count (``durable`` also counts a round with fewer than 3
replies, which CLIP-Fed does not score and in which it excludes no one). ``same`` counts the rounds
whose replayed exclusions equal the run's: the run's own settings give every round, but for a
combined score within the recorded 4 decimals of the threshold (that checks the replay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipfed.defense.scoring import combine, combine_low, flagged, running_scores
from clipfed.errors import UserError


@dataclass(frozen=True)
class Rule:
    """An exclusion rule: the signals combined, the history weight, the threshold, and the signals
    whose lowness is read at ``low_threshold`` (none: one-sided)."""

    signals: tuple[str, ...]
    weight: float
    threshold: float
    low_signals: tuple[str, ...] = ()
    low_threshold: float = 2.0

    def label(self) -> str:
        """Its cells of a table row: signals, history weight, threshold, low side."""
        low = f"{','.join(self.low_signals)} > {self.low_threshold:g}" if self.low_signals else "off"
        return f"{','.join(self.signals)} | {self.weight:g} | {self.threshold:g} | {low}"


@dataclass(frozen=True)
class Replay:
    """One rule replayed on one run: pooled counts and how many rounds matched the run's."""

    rule: Rule
    tp: int
    fp: int
    fn: int
    clean_fp: int
    clean_benign: int
    rounds: int
    same: int
    runs: int = 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else None

    @property
    def fpr(self) -> float | None:
        return self.clean_fp / self.clean_benign if self.clean_benign else None


def scored_rounds(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The rounds >= 1 of a result that recorded CLIP-Fed scores, in order."""
    return [e for e in result.get("rounds", []) if e.get("round", 0) >= 1
            and isinstance(e.get("defense"), dict) and "scores" in e["defense"]]


def replay(result: dict[str, Any], rule: Rule) -> Replay:
    """``rule`` applied to every scored round of ``result`` (a result.json's dict).

    Raises:
        UserError: No round recorded CLIP-Fed scores, or a round lacks one of ``rule.signals``
            (runs made before every signal was recorded have ``proto`` and ``sybil`` only).
    """
    rounds = scored_rounds(result)
    if not rounds:
        raise UserError(f"{result.get('run_name', 'this run')}: no round recorded CLIP-Fed scores "
                        "(defense clipfed, clipfed-pre on); nothing to replay")
    history: dict[int, float] = {}
    low_history: dict[int, float] = {}
    counts = [0] * 5  # tp, fp, fn, clean_fp, clean_benign
    same = 0
    for entry in rounds:
        scores = entry["defense"]["scores"]
        if missing := [s for s in rule.signals + rule.low_signals if s not in scores]:
            recorded = ", ".join(k for k in scores if k not in ("partition", "combined", "running"))
            raise UserError(f"{result.get('run_name', 'this run')} round {entry['round']}: no {', '.join(missing)} "
                            f"scores recorded; it has {recorded}")
        partitions = [int(p) for p in scores["partition"]]
        combined = combine({s: torch.tensor(scores[s], dtype=torch.float32) for s in rule.signals})
        running = running_scores(history, partitions, combined, rule.weight)
        low = None
        if rule.low_signals:
            lowness = combine_low({s: torch.tensor(scores[s], dtype=torch.float32) for s in rule.low_signals})
            low = running_scores(low_history, partitions, lowness, rule.weight)
        excluded = {partitions[i] for i in flagged(running, rule.threshold, low, rule.low_threshold)}
        same += excluded == set(entry.get("excluded", []))
        counts = [total + n for total, n in zip(counts, round_counts(entry, partitions, excluded), strict=True)]
    tp, fp, fn, clean_fp, clean_benign = counts
    return Replay(rule, tp, fp, fn, clean_fp, clean_benign, len(rounds), same)


def round_counts(entry: dict[str, Any], partitions: list[int], excluded: set[int]) -> tuple[int, int, int, int, int]:
    """One round's detection counts for ``excluded`` among its clients ``partitions``: (tp, fp,
    fn, 0, 0) in a round in which a sampled client attacked (``entry["malicious"]``), else
    (0, 0, 0, false positives, benign clients), the false-positive rate's parts."""
    malicious = set(entry.get("malicious", []))
    if malicious:
        return len(excluded & malicious), len(excluded - malicious), len((malicious & set(partitions)) - excluded), 0, 0
    return 0, 0, 0, len(excluded), len(partitions)


def pooled(replays: Sequence[Replay]) -> list[Replay]:
    """Replays of one rule on several runs summed into one (counts and rounds), a replay per rule
    in first-seen order: a suite's detection for each rule, as ``durable`` pools a run's rounds."""
    by_rule: dict[Rule, Replay] = {}
    for r in replays:
        if (seen := by_rule.get(r.rule)) is not None:
            r = Replay(r.rule, seen.tp + r.tp, seen.fp + r.fp, seen.fn + r.fn, seen.clean_fp + r.clean_fp,
                       seen.clean_benign + r.clean_benign, seen.rounds + r.rounds, seen.same + r.same,
                       seen.runs + r.runs)
        by_rule[r.rule] = r
    return list(by_rule.values())


def recorded(result: dict[str, Any], signals: tuple[str, ...]) -> bool:
    """Whether every scored round of ``result`` recorded every one of ``signals``."""
    return all(all(s in e["defense"]["scores"] for s in signals) for e in scored_rounds(result))


def replay_table(run_name: str, replays: list[Replay], unrecorded: Sequence[Rule] = ()) -> str:
    """A markdown table of replays of one run, a row per rule; ``unrecorded`` rules (a signal the
    run did not record in every round) get a row that says so."""
    def cell(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [f"**{run_name}**", "",
             "| signals | history weight | threshold | low side | precision | recall | F1 | FPR (attack-free) "
             "| tp | fp | fn | same exclusions as the run |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in replays:
        runs = f" ({r.runs} runs)" if r.runs > 1 else ""
        lines.append(f"| {r.rule.label()} | {cell(r.precision)} | {cell(r.recall)} | {cell(r.f1)} "
                     f"| {cell(r.fpr, 3)} | {r.tp} | {r.fp} | {r.fn} | {r.same} of {r.rounds}{runs} |")
    for rule in unrecorded:
        lines.append(f"| {rule.label()} | n/a: not recorded in every round |" + " |" * 7)
    return "\n".join(lines)
