"""Would robust z-scores against several rounds' clients, not only this round's 10, separate better?

A replay on the durable CLIP-Fed runs' recorded scores (issue 20), beside `clipfed bench-replay`:
the strategy's rule computes each signal's robust z (median, MAD) over the round's own clients,
a noisy scale at 10 clients a round. Here the z of a client's signal is taken against this round
and the previous K scored rounds together (K = 0: the strategy's own rule), in two forms:
`pooled` (median and MAD of the pooled values) and `scale` (this round's median, the MAD of the
pooled deviations from each round's own median). Everything else is the strategy's: clipping
at 0, the mean over signals, `running_scores`, `flagged` and the low side. Detection is pooled per
attack as `clipfed bench-replay --pooled` does. Run from the repository root:

    python docs/bench-durable/replay/reference_rounds.py > docs/bench-durable/replay/reference_rounds.md
"""

from __future__ import annotations

import json
from collections import deque
from itertools import product
from pathlib import Path

import torch

from clipfed.bench.replay import Rule, round_counts, scored_rounds
from clipfed.defense.scoring import flagged, running_scores

RUNS = Path("docs/bench-durable/runs")
ATTACKS = ("badnets", "constrain-scale", "pgd", "clipfed-aware", "f3ba", "single-shot", "a3fl")
SIGNAL_SETS = (("proto", "sybil"), ("kl", "sybil"), ("kl", "proto", "sybil"), ("proto", "geometry", "sybil"))
LOW_SETS = ((), ("proto",))
SIGNALS = ("kl", "proto", "trigger", "geometry", "sybil")


def z_against(values: torch.Tensor, past: list[torch.Tensor], form: str) -> torch.Tensor:
    """Robust z of ``values`` (this round's clients) against this round and ``past`` rounds."""
    if form == "scale":
        median = values.median()
        deviations = torch.cat([p - p.median() for p in past] + [values - median])
        mad = deviations.abs().median()
    else:  # pooled (with no past rounds this is the strategy's robust_z)
        pool = torch.cat([*past, values])
        median = pool.median()
        mad = (pool - median).abs().median()
    return (values - median) / (1.4826 * mad).clamp_min(1e-6 * (1 + median.abs()))


def replay(result: dict, signals: tuple[str, ...], weight: float, threshold: float, low: tuple[str, ...],
           rounds_back: int, form: str) -> list[int]:
    """Pooled (tp, fp, fn, clean_fp, clean_benign) of the rule on ``result``'s scored rounds."""
    history: dict[int, float] = {}
    low_history: dict[int, float] = {}
    past: dict[tuple[str, int], deque[torch.Tensor]] = {}
    counts = [0] * 5
    for entry in scored_rounds(result):
        scores = entry["defense"]["scores"]
        partitions = [int(p) for p in scores["partition"]]

        def combined(names: tuple[str, ...], sign: int, scores: dict = scores) -> torch.Tensor:
            zs = []
            for name in names:
                values = sign * torch.tensor(scores[name], dtype=torch.float32)
                kept = past.setdefault((name, sign), deque(maxlen=rounds_back or 1))
                zs.append(z_against(values, list(kept) if rounds_back else [], form).clamp_min(0))
                kept.append(values)
            return torch.stack(zs).mean(0)

        running = running_scores(history, partitions, combined(signals, 1), weight)
        lowness = running_scores(low_history, partitions, combined(low, -1), weight) if low else None
        excluded = {partitions[i] for i in flagged(running, threshold, lowness, Rule.low_threshold)}
        counts = [total + n for total, n in zip(counts, round_counts(entry, partitions, excluded), strict=True)]
    return counts


def main() -> None:
    loaded = {a: [json.loads((d / "result.json").read_text()) for d in sorted(RUNS.glob(f"*--clipfed*--{a}--s0-*"))]
              for a in ATTACKS}
    # the runs that recorded all five signals in every round: every rule is judged on the same runs
    results = {a: [r for r in runs if all(s in e["defense"]["scores"] for e in scored_rounds(r) for s in SIGNALS)]
               for a, runs in loaded.items()}
    rows = []
    for signals, weight, threshold, low, (rounds_back, form) in product(
            SIGNAL_SETS, (1.0, 0.5), (1.5, 2.0, 2.5, 3.0, 3.5), LOW_SETS,
            ((0, "pooled"), (5, "pooled"), (10, "pooled"), (20, "pooled"), (5, "scale"), (10, "scale"), (20, "scale"))):
        cells = {}
        for attack, runs in results.items():
            if runs:  # every run of ``results`` recorded every signal
                counts = [replay(r, signals, weight, threshold, low, rounds_back, form) for r in runs]
                tp, fp, fn, cfp, cb = (sum(x) for x in zip(*counts, strict=True))
                cells[attack] = (tp / (tp + fp) if tp + fp else 0.0, tp / (tp + fn) if tp + fn else 0.0, cfp / cb)
        f1 = min(2 * p * r / (p + r) if p + r else 0.0 for p, r, _ in cells.values())
        fpr = max(f for _, _, f in cells.values())
        rows.append((f1, fpr, signals, weight, threshold, low, rounds_back, form, cells))
    print("Rules over the recorded signals, replayed on every durable CLIP-Fed run of seed 0 that recorded them,\n"
          "pooled per attack (precision / recall / FPR on attack-free rounds). For each reference (K rounds back,\n"
          "form), the rule with the best worst-column F1, and the best with every column's FPR <= 0.05.\n")
    print("| reference | rule (signals, history weight, threshold, low side) | worst F1 | max FPR | "
          + " | ".join(ATTACKS) + " |")
    print("|---|---|---:|---:|" + "---|" * len(ATTACKS))
    for rounds_back, form in ((0, "pooled"), (5, "pooled"), (10, "pooled"), (20, "pooled"), (5, "scale"),
                              (10, "scale"), (20, "scale")):
        mine = [r for r in rows if r[6] == rounds_back and r[7] == form]
        best = max(mine, key=lambda r: r[0])
        low_fpr = [r for r in mine if r[1] <= 0.05]
        best_low = max(low_fpr, key=lambda r: r[0]) if low_fpr else None
        for label, row in (("best worst F1", best), ("FPR <= 0.05", best_low)):
            reference = "this round only (the strategy)" if rounds_back == 0 else f"{form}, {rounds_back} rounds back"
            if row is None:
                print(f"| {reference} | {label}: no rule | | |" + " |" * len(ATTACKS))
                continue
            f1, fpr, signals, weight, threshold, low, *_, cells = row
            rule = f"{label}: `{','.join(signals)}`, {weight:g}, {threshold:g}, {'`proto` > 2' if low else 'off'}"
            print(f"| {reference} | {rule} | {f1:.2f} | {fpr:.3f} | "
                  + " | ".join(f"{p:.2f} / {r:.2f} / {f:.3f}" if a in cells else "n/a"
                               for a in ATTACKS for p, r, f in [cells.get(a, (0.0, 0.0, 0.0))]) + " |")


if __name__ == "__main__":
    main()
