"""The durable protocol's per-run metrics, from ``result.json`` alone.

How long a backdoor outlives its attack window, and how well a defense detects attackers that are
sampled only now and then. For a run whose attack window is rounds [start, end] (``attack-start-round``,
``attack-end-round``) and whose last round is N:

- ``asr_end``: ASR at round ``end``; ``asr_max``: the highest ASR of rounds start..end;
- ``asr_plus10``, ``asr_plus25``: ASR at rounds end + 10 and end + 25 (null when N is earlier);
- ``floor``: the clean floor, the mean ASR of FedAvg without attack (same setting, seed and
  trigger) over rounds end..N, what the trigger scores on a model nobody poisoned; read only from a
  *completed* run of it (a failed or stopped one is no floor: null, with its status as the reason);
- ``lifespan``: the first k >= 0 at which ASR at round end + k is within ``LIFESPAN_MARGIN`` of the
  floor (0: the backdoor was gone when the window closed, or never took); null when ASR never
  comes back before N, or when the run ended before (or at) the window's end;
- detection over the attacked rounds (a round in which a sampled client attacked: ``malicious`` is
  not empty), *pooled*: with tp, fp, fn summed over those rounds, precision tp/(tp+fp), recall
  tp/(tp+fn) and F1 2tp/(2tp+fp+fn). A mean of per-round precisions would count only the rounds in
  which the defense excluded someone, so one correct exclusion in 20 attacked rounds would score
  1.0; pooled, its recall and F1 show the 19 misses. ``attacked_rounds`` is how many rounds are
  pooled and ``precision_rounds`` / ``recall_rounds`` / ``f1_rounds`` how many of them add to each
  metric's denominator (for precision: the rounds that excluded someone); each round's own values
  are in ``per_round``;
- ``fpr``: false positives over the benign clients of the attack-free rounds (rounds >= 1 in which
  no sampled client attacked, inside the window or after it), pooled: fp/(fp+tn).

A metric that cannot be computed is None with its reason in ``unavailable``, as in ``result.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from clipfed.runs.results import attack_window

LIFESPAN_MARGIN = 0.05  # "back within 5 points of the clean floor"
AFTER = (10, 25)  # ASR is reported this many rounds after the window


@dataclass
class DurableMetrics:
    """One run's durable metrics (fractions, rounds); None where uncomputable, with the reason."""

    values: dict[str, float | None] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_round: list[dict[str, Any]] = field(default_factory=list)  # each attacked round's detection

    def put(self, key: str, value: float | None, why: str = "") -> None:
        self.values[key] = value
        if value is None:
            self.unavailable[key] = why


KEYS = ("asr_end", "asr_max", *(f"asr_plus{k}" for k in AFTER), "floor", "lifespan", "precision", "recall",
        "f1", "fpr")
# How many attacked rounds the pooled detection covers: all of them, and those adding to each
# metric's denominator (always a count, never null).
COVERAGE_KEYS = ("attacked_rounds", "precision_rounds", "recall_rounds", "f1_rounds")


def asr_by_round(result: dict[str, Any]) -> dict[int, float | None]:
    return {e["round"]: e.get("asr") for e in result["rounds"]}


def clean_floor(floor_result: dict[str, Any] | None, end: int) -> tuple[float | None, str]:
    """The mean ASR of the FedAvg-without-attack run over rounds ``end``.. its last (the rounds
    a lifespan is read on), and why there is none."""
    if floor_result is None:
        return None, "no FedAvg-without-attack run of this setting, seed and attack to read the floor from"
    if (status := floor_result.get("status", "completed")) != "completed":
        return None, f"the FedAvg-without-attack run is {status}, not completed: its ASR is no floor"
    values = [a for r, a in asr_by_round(floor_result).items() if r >= end and a is not None]
    if not values:
        return None, f"the FedAvg-without-attack run has no ASR from round {end} on"
    return mean(values), ""


def durable_metrics(result: dict[str, Any], floor_result: dict[str, Any] | None) -> DurableMetrics:
    """The durable metrics of ``result``, its clean floor read from ``floor_result`` (FedAvg
    without attack in the same setting and seed; None when there is none)."""
    out = DurableMetrics()
    if not result["rounds"]:  # a run that failed before its first round (or wrote no result)
        for key in KEYS:
            out.put(key, None, f"the run has no round ({result.get('status', 'completed')})")
        out.values |= dict.fromkeys(COVERAGE_KEYS, 0)
        return out
    start, end = attack_window(result["config"])
    asr = asr_by_round(result)
    last = max(asr, default=0)
    if end is None:
        for key in ("asr_end", *(f"asr_plus{k}" for k in AFTER), "floor", "lifespan"):
            out.put(key, None, "no attack window: attack-end-round is 0 (the attack lasts to the end)")
        end = last
    else:
        _window_metrics(out, asr, end, last, result, floor_result)
    window = [a for r, a in asr.items() if start <= r <= end and a is not None]
    out.put("asr_max", max(window) if window else None, "no ASR in the window (no attack, diverged or no round)")
    _detection(out, result)
    return out


def _window_metrics(out: DurableMetrics, asr: dict[int, float | None], end: int, last: int,
                    result: dict[str, Any], floor_result: dict[str, Any] | None) -> None:
    """ASR at the window's end and after it, the clean floor and the lifespan."""
    stopped = "" if result.get("status", "completed") == "completed" else f" ({result.get('status')})"
    if end > last:
        out.put("asr_end", None, f"the run stopped at round {last}{stopped}, before the window's end (round {end})")
    else:
        out.put("asr_end", asr.get(end), f"no ASR at round {end} (diverged or no attack)")
    for k in AFTER:
        at = end + k
        if at > last:
            out.put(f"asr_plus{k}", None, f"the run ends at round {last}{stopped}, {max(last - end, 0)} rounds "
                                          f"after the window; +{k} is round {at}")
        else:
            out.put(f"asr_plus{k}", asr.get(at), f"no ASR at round {at} (diverged or no attack)")
    floor, why = clean_floor(floor_result, end)
    out.put("floor", floor, why)
    if floor is None:
        out.put("lifespan", None, f"no clean floor: {why}")
        return
    back = next((r - end for r in range(end, last + 1) if (a := asr.get(r)) is not None
                 and a <= floor + LIFESPAN_MARGIN), None)
    final = asr.get(last)
    if last < end:
        why = f"the run stopped at round {last}{stopped}, before the window's end (round {end}): no round to read it on"
    elif last == end:
        why = (f"the run ended at the window's end (round {end}){stopped} with ASR "
               f"{'n/a' if final is None else f'{final:.3f}'}, not within {LIFESPAN_MARGIN:.2f} of the floor "
               f"{floor:.3f}, and has no round after the window")
    else:
        why = (f"ASR never came back within {LIFESPAN_MARGIN:.2f} of the floor {floor:.3f} in the {last - end} "
               f"rounds after the window{stopped} (round {last}: ASR {'n/a' if final is None else f'{final:.3f}'})")
    out.put("lifespan", back, why)


def _detection(out: DurableMetrics, result: dict[str, Any]) -> None:
    attacked = [e for e in result["rounds"] if e["round"] >= 1 and e.get("malicious")]
    clean = [e for e in result["rounds"] if e["round"] >= 1 and not e.get("malicious")]
    for entry in attacked:
        d = entry["detection"]
        tp, fp, fn = d["tp"], d["fp"], d["fn"]
        out.per_round.append({"round": entry["round"], "tp": tp, "fp": fp, "fn": fn, "tn": d.get("tn", 0),
                              "precision": tp / (tp + fp) if tp + fp else None,
                              "recall": tp / (tp + fn) if tp + fn else None,
                              "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None})
    tp, fp, fn = (sum(r[k] for r in out.per_round) for k in ("tp", "fp", "fn"))
    out.values["attacked_rounds"] = len(out.per_round)
    for key in ("precision", "recall", "f1"):
        out.values[f"{key}_rounds"] = sum(r[key] is not None for r in out.per_round)
    none_attacked = "no round in which a sampled client attacked"
    out.put("precision", tp / (tp + fp) if tp + fp else None,
            f"the defense excluded no client in any of the {len(attacked)} attacked rounds" if attacked
            else none_attacked)
    out.put("recall", tp / (tp + fn) if tp + fn else None,
            "no attacker among the scored clients of the attacked rounds" if attacked else none_attacked)
    out.put("f1", 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "no attacker and no exclusion in the attacked rounds" if attacked else none_attacked)
    fp = sum(e["detection"]["fp"] for e in clean)
    tn = sum(e["detection"].get("tn", 0) for e in clean)
    out.put("fpr", fp / (fp + tn) if fp + tn else None,
            "no attack-free round (every round sampled an attacker)" if not clean else "no benign client scored")
