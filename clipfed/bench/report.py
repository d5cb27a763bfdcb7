"""A suite's outputs: ``table.md``/``table.csv`` (mean and std over seeds), PNG plots, ``report.md``.

Rows per data setting and attack: the controls (FedAvg without attack, teacher only), then each
defense and variant. Detection precision/recall are pooled over the attacked rounds of all seeds.
Every table and plot names its teacher (the offline stand-in says so), its seeds and the status of
its rows: a row whose run failed, stopped or whose defense never aggregated is marked in the table
itself. A suite with an attack window (the durable protocol) also gets ``durable.md`` and
``durable.json`` (``clipfed.bench.durable``: ASR after the window, lifespan, detection pooled over the
attacked rounds, each round's own in the json).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import numpy as np

from clipfed.bench.durable import COVERAGE_KEYS, LIFESPAN_MARGIN, DurableMetrics, durable_metrics
from clipfed.bench.durable import KEYS as DURABLE_KEYS
from clipfed.bench.runner import Cell
from clipfed.bench.suites import Plateau, Suite
from clipfed.runs.results import (
    RESULT_FILE,
    attack_window,
    detection_totals,
    diverged_at,
    load_result,
    run_status,
    teacher_of,
    versions,
)

COLUMNS = ("setting", "attack", "row", "seeds", "diverged", "ma_mean", "ma_std", "asr_mean", "asr_std",
           "recall", "precision", "server_s_per_round", "round_s", "racc_mean", "racc_std", "seed_list", "status",
           "teacher", "averaged")
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _tally(values: list[str]) -> str:
    """``completed`` when every seed's run says so, else ``2 completed, 1 failed``."""
    counts = {v: values.count(v) for v in dict.fromkeys(values)}
    return values[0] if len(counts) == 1 else ", ".join(f"{n} {v}" for v, n in counts.items())


@dataclass
class Row:
    setting: str
    attack: str
    row: str
    results: list[dict[str, Any]]

    @property
    def seed_list(self) -> str:
        return ",".join(str(r.get("seed", "?")) for r in self.results)

    @property
    def status(self) -> str:
        """The runs' statuses over the seeds (``completed``; ``1 completed, 1 failed``; ``completed,
        NEVER AGGREGATED``): what a table must show beside numbers that are no defense at work."""
        return _tally([run_status(r) for r in self.results]) if self.results else "no run"

    @property
    def teacher(self) -> str:
        return _tally([teacher_of(r) for r in self.results]) if self.results else "none"

    @property
    def plain(self) -> bool:
        """Every run completed and aggregated in every round: nothing to mark."""
        return self.status == "completed"

    @property
    def completed(self) -> list[dict[str, Any]]:
        """The runs that completed: a failed or stopped run's last round is not a final result."""
        return [r for r in self.results if r.get("status", "completed") == "completed"]

    def values(self) -> dict[str, Any]:
        """Means and stds over the completed seeds whose final model is finite (``averaged``;
        ``diverged`` counts the diverged, the status the unfinished); None where no seed gives a
        value (all diverged or failed, no attack, no rounds)."""
        finals = [r.get("final") or {} for r in self.completed if diverged_at(r) is None]
        mas, asrs, raccs = ([f[k] for f in finals if f.get(k) is not None] for k in ("ma", "asr", "racc"))
        tp, fp, fn = (sum(column) for column in zip(*(detection_totals(r) for r in self.results), strict=True))
        rounds = [entry for result in self.results for entry in result["rounds"] if entry["round"] >= 1]
        server = [entry["server_seconds"] for entry in rounds]
        round_seconds = [entry["round_seconds"] for entry in rounds]
        return {
            "setting": self.setting, "attack": self.attack, "row": self.row, "seeds": len(self.results),
            "diverged": sum(1 for r in self.results if diverged_at(r) is not None), "averaged": len(finals),
            "ma_mean": mean(mas) if mas else None, "ma_std": _std(mas),
            "asr_mean": mean(asrs) if asrs else None, "asr_std": _std(asrs),
            "racc_mean": mean(raccs) if raccs else None, "racc_std": _std(raccs),
            "recall": tp / (tp + fn) if tp + fn else None, "precision": tp / (tp + fp) if tp + fp else None,
            "server_s_per_round": mean(server) if server else None,
            "round_s": mean(round_seconds) if round_seconds else None,
            "seed_list": self.seed_list, "status": self.status, "teacher": self.teacher,
        }


def _std(values: list[float]) -> float | None:
    return (pstdev(values) if len(values) > 1 else 0.0) if values else None


def _load(cell: Cell, run_dir: Path) -> dict[str, Any]:
    """A run's result; for a run that failed before writing one, a result that says so (its row
    is then marked failed, not left out)."""
    if (run_dir / RESULT_FILE).is_file():
        return load_result(run_dir)
    return {"run_name": run_dir.name, "status": "failed (no result.json)", "seed": cell.seed, "config": {},
            "rounds": [], "final": None}


def collect(runs: list[tuple[Cell, Path]]) -> list[Row]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell, run_dir in runs:
        if not cell.pretrain:
            grouped[(cell.setting, cell.attack, cell.row)].append(_load(cell, run_dir))
    return [Row(s, a, r, results) for (s, a, r), results in grouped.items()]


def caption(rows: list[Row]) -> str:
    """What every table states above it: the teachers, the seeds and how many runs completed (a
    run that several rows show, a control shared by attack columns, counted once)."""
    teachers = sorted({t for row in rows for r in row.results if (t := teacher_of(r)) != "none"})
    seeds = sorted({str(r.get("seed", "?")) for row in rows for r in row.results})
    distinct = {r.get("run_name") or id(r): r for row in rows for r in row.results}
    statuses = [run_status(r) for r in distinct.values()]
    return (f"Teacher: {', '.join(teachers) or 'none (no row uses one)'}; seeds: {', '.join(seeds) or 'none'}; "
            f"runs: {_tally(statuses) if statuses else 'none'}.\n")


def _pm(v: dict[str, Any], metric: str) -> str:
    """``mean ± std`` of ``metric`` over the finite seeds, marked when some or all seeds diverged."""
    if v["seeds"] and v["diverged"] == v["seeds"]:
        return "diverged"
    value, std = v[f"{metric}_mean"], v[f"{metric}_std"]
    shown = "n/a" if value is None else f"{value:.3f}" + (f" ± {std:.3f}" if v["averaged"] > 1 else "")
    return shown + (f" ({v['diverged']}/{v['seeds']} seeds diverged)" if v["diverged"] else "")


def _opt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _status_cell(row: Row) -> str:
    return row.status if row.plain else f"**{row.status}**"


def markdown_table(rows: list[Row]) -> str:
    lines = [caption(rows), "| setting | attack | row | teacher | seeds | status | final MA | final ASR | final R-Acc "
             "| det. recall | det. precision | server s/round | round s |", "|---" * 13 + "|"]
    for row in rows:
        v = row.values()
        lines.append(f"| {v['setting']} | {v['attack']} | {v['row']} | {v['teacher']} | {v['seed_list']} | "
                     f"{_status_cell(row)} | {_pm(v, 'ma')} | {_pm(v, 'asr')} | {_pm(v, 'racc')} | "
                     f"{_opt(v['recall'])} | {_opt(v['precision'])} | {_opt(v['server_s_per_round'])} | "
                     f"{_opt(v['round_s'], 1)} |")
    return "\n".join(lines) + "\n"


def paper_table(rows: list[Row]) -> str:
    """Per setting, the paper layout: one line per row (defense or control), final MA / ASR / R-Acc
    under each attack, mean over the finite seeds (``diverged`` where none is, a mark where some are not,
    the status where a run failed or the defense never aggregated)."""
    blocks = []
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting]
        attacks = list(dict.fromkeys(r.attack for r in mine))
        cells = {(r.row, r.attack): r for r in mine}
        lines = [f"**{setting}** (final MA / ASR / R-Acc)", "", caption(mine), "| row | " + " | ".join(attacks) + " |",
                 "|---|" + "---|" * len(attacks)]
        for name in dict.fromkeys(r.row for r in mine):
            shown = [_paper_cell(cells.get((name, a))) for a in attacks]
            lines.append(f"| {name} | " + " | ".join(shown) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _paper_cell(row: Row | None) -> str:
    if row is None:
        return "n/a"
    v = row.values()
    mark = "" if row.plain else f" **{row.status}**"
    if v["seeds"] and v["diverged"] == v["seeds"]:
        return "diverged" + mark
    if v["ma_mean"] is None or v["asr_mean"] is None:
        return "n/a" + mark
    racc = "n/a" if v["racc_mean"] is None else f"{v['racc_mean']:.3f}"
    return f"{v['ma_mean']:.3f} / {v['asr_mean']:.3f} / {racc}" + (f" ({v['diverged']}/{v['seeds']} diverged)"
                                                                  if v["diverged"] else "") + mark


def durable_results(rows: list[Row]) -> dict[tuple[str, str, str], list[tuple[dict[str, Any], DurableMetrics]]]:
    """Each row's runs with their durable metrics, the clean floor read from the FedAvg-without-
    attack run of the same setting, attack column and seed (only if that run completed:
    ``clean_floor`` gives a failed or stopped one's status as the reason for no floor)."""
    floors = {(row.setting, row.attack, r.get("seed")): r for row in rows if row.row == "fedavg-no-attack"
              for r in row.results}
    return {(row.setting, row.attack, row.row): [(r, durable_metrics(r, floors.get((row.setting, row.attack,
                                                                                    r.get("seed")))))
                                                 for r in row.results] for row in rows}


_DURABLE_HEADERS = {"asr_end": "ASR at window end", "asr_max": "window max ASR", "asr_plus10": "ASR +10",
                    "asr_plus25": "ASR +25", "floor": "clean floor", "lifespan": "lifespan (rounds)",
                    "precision": "det. precision, pooled [rounds]", "recall": "det. recall, pooled [rounds]",
                    "f1": "det. F1, pooled [rounds]", "fpr": "FPR, attack-free rounds"}


def _durable_cell(runs: list[tuple[dict[str, Any], DurableMetrics]], key: str) -> str:
    """Mean ± std of one durable metric over the completed seeds that have it; ``n/a (why)`` where
    none has (the first seed's reason), and how many seeds lack it where some do. A row whose runs
    are all still running, stopped or interrupted (a long suite read mid-way) shows what its rounds
    so far give, marked ``(partial: running)`` (``stopped``, ``interrupted``): a window that has
    closed has its ASR, a lifespan already reached is final, pooled detection counts the rounds so
    far. A failed run's rounds are not shown as the row's."""
    done = [m for r, m in runs if r.get("status", "completed") == "completed"]
    unfinished = {str(r.get("status")) for r, _ in runs}
    partial = bool(runs) and not done and unfinished <= {"running", "stopped", "interrupted"}
    if partial:
        done = [m for _, m in runs]
    values = [v for m in done if (v := m.values.get(key)) is not None]
    missing = [m.unavailable.get(key, "") for m in done if m.values.get(key) is None]
    if not partial:
        missing += [f"run {r.get('status')}" for r, _ in runs if r.get("status", "completed") != "completed"]
    if not values:
        return f"n/a ({missing[0]})" if missing else "n/a"
    digits = 1 if key == "lifespan" else 3
    shown = f"{mean(values):.{digits}f}" + (f" ± {pstdev(values):.{digits}f}" if len(values) > 1 else "")
    if f"{key}_rounds" in COVERAGE_KEYS:  # pooled detection: of how many attacked rounds, in the seeds shown
        covered = [m for m in done if m.values.get(key) is not None]
        shown += (f" [{sum(int(m.values.get(f'{key}_rounds') or 0) for m in covered)}/"
                  f"{sum(int(m.values.get('attacked_rounds') or 0) for m in covered)}]")
    shown += f" ({len(missing)}/{len(runs)} seeds n/a)" if missing else ""
    label = "/".join(sorted(unfinished))
    # a floor is read from a completed run
    return shown + (f" (partial: {label})" if partial and key != "floor" else "")


def durable_table(rows: list[Row]) -> str:
    """The durable protocol's table: per row, ASR at the window's end, its maximum, at +10 and +25
    rounds, the clean floor, the backdoor's lifespan, detection pooled over the attacked rounds
    (with [k/n]: k of the n attacked rounds add to that metric's denominator) and the
    false-positive rate on attack-free rounds; mean ± std over seeds."""
    metrics = durable_results(rows)
    windows = sorted({f"{s}-{'end' if e is None else e}" for row in rows for r in row.results if r["config"]
                      for s, e in [attack_window(r["config"])]})
    lines = [caption(rows), f"Attack windows (first-last round): {', '.join(windows) or 'none'}; lifespan: rounds "
             f"after the window until ASR is within {LIFESPAN_MARGIN:.2f} of the clean floor (FedAvg without "
             "attack, same setting and seed).", "",
             "| setting | attack | row | teacher | seeds | status | " + " | ".join(_DURABLE_HEADERS.values()) + " |",
             "|---" * (6 + len(_DURABLE_HEADERS)) + "|"]
    for row in rows:
        runs = metrics[(row.setting, row.attack, row.row)]
        cells = [_durable_cell(runs, key) for key in _DURABLE_HEADERS]
        lines.append(f"| {row.setting} | {row.attack} | {row.row} | {row.teacher} | {row.seed_list} | "
                     f"{_status_cell(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_durable_json(rows: list[Row], path: Path) -> None:
    """Every run's durable metrics, their reasons where null, and each attacked round's detection."""
    document = [{"setting": s, "attack": a, "row": name, "run": r["run_name"], "seed": r.get("seed"),
                 "status": run_status(r), "teacher": teacher_of(r),
                 "metrics": {k: m.values.get(k) for k in (*DURABLE_KEYS, *COVERAGE_KEYS)},
                 "unavailable": m.unavailable,
                 "attacked_rounds": m.per_round}
                for (s, a, name), runs in durable_results(rows).items() for r, m in runs]
    path.write_text(json.dumps(document, indent=2) + "\n")


def warm_start_lines(runs: list[tuple[Cell, Path]], plateau: Plateau | None) -> str:
    """Per warm start: its rounds, final MA and, when trained to a plateau, whether the plateau
    rule ended it or the round cap did (the gain of the last window over the one before)."""
    lines = []
    for cell, run_dir in runs:
        if not cell.pretrain or not (run_dir / RESULT_FILE).is_file():
            continue
        result = load_result(run_dir)
        mas = [e["ma"] for e in result["rounds"] if e["round"] >= 1]
        line = (f"- warm start {cell.setting}, seed {cell.seed}: {len(mas)} rounds of clean FedAvg, MA "
                f"{_opt(mas[-1] if mas else None, 3)} ({run_status(result)})")
        if plateau is not None:
            gain = plateau.gain(mas)
            shown = "n/a" if gain is None else f"{100 * gain:+.2f} points"
            ended = ("plateau reached" if gain is not None and gain < plateau.min_gain
                     else f"NOT at a plateau: stopped by the {plateau.max_rounds}-round cap")
            line += (f"; mean MA of the last {plateau.window} rounds vs the {plateau.window} before: {shown} "
                     f"(rule: < {100 * plateau.min_gain:.1f}) — {ended}")
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


def diverged_notes(rows: list[Row]) -> str:
    """Runs whose final global model is not finite: their MA/ASR are no numbers, not 0 or 1."""
    lines = []
    for row in rows:
        runs = [(r.get("seed", "?"), at) for r in row.results if (at := diverged_at(r)) is not None]
        if runs:
            lines.append(f"- {row.row} ({row.setting}, {row.attack}): diverged (NaN/Inf model) in "
                         + ", ".join(f"seed {seed} from round {at}" for seed, at in runs)
                         + "; means and plots use the other seeds")
    return "\n".join(lines) + "\n" if lines else ""


def skipped_notes(rows: list[Row]) -> str:
    """Rows whose defense kept the previous model in some rounds (say Bulyan with too few
    updates): their MA/ASR are the warm start's, not a defense at work, and the table must say so."""
    lines = []
    for row in rows:
        rounds = [e for r in row.results for e in r["rounds"] if e["round"] >= 1]
        reasons = sorted({e.get("defense", {}).get("skipped", "") for e in rounds} - {""})
        skipped = sum(1 for e in rounds if e.get("defense", {}).get("skipped"))
        if skipped:
            lines.append(f"- {row.row} ({row.setting}, {row.attack}): kept the previous model in {skipped} of "
                         f"{len(rounds)} rounds ({'; '.join(reasons)})")
    return "\n".join(lines) + "\n" if lines else ""


def _best_recall(scores: np.ndarray, positive: np.ndarray, min_precision: float) -> tuple[float, float | None]:
    """The highest recall any threshold on ``scores`` reaches at precision >= ``min_precision``,
    and that threshold (None: none does): tells whether a missed detection target is the threshold
    or the ranking."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(positive, scores)
    ok = np.flatnonzero(precision[:-1] >= min_precision)  # the last point has no threshold
    if not len(ok):
        return 0.0, None
    best = ok[np.argmax(recall[ok])]
    return float(recall[best]), float(thresholds[best])


def _auc(signal: str, labels: list[bool], values: list[float]) -> str:
    """``signal AUC`` over the rounds that recorded it, or why there is none (one class only, or
    a non-finite score)."""
    from sklearn.metrics import roc_auc_score

    positive = np.array(labels, dtype=bool)
    if not positive.any() or positive.all():
        return f"{signal} n/a (attackers or benign clients missing in its rounds)"
    if not np.isfinite(np.array(values, dtype=float)).all():
        return f"{signal} n/a (non-finite scores)"
    return f"{signal} {roc_auc_score(positive, values):.2f}"


def separability_table(rows: list[Row], min_precision: float = 0.8) -> str:
    """How well each detection signal ranks the attackers above the benign clients, pooled over the
    attacked rounds of all seeds: AUC per signal and of the combined and running scores, and the best
    recall any threshold on the score the exclusion reads (``running`` where the run kept history,
    else ``combined``) reaches at the target precision (the configured threshold may sit elsewhere)."""
    lines = []
    for row in rows:
        # each signal with the labels of the rounds that recorded it (runs made before every signal
        # was recorded, or resumed across that change, hold some signals in some rounds only)
        pooled: dict[str, list[float]] = defaultdict(list)
        labels: dict[str, list[bool]] = defaultdict(list)
        for entry in (e for r in row.results for e in r["rounds"] if e["round"] >= 1):
            scores = entry.get("defense", {}).get("scores")
            if not scores:
                continue
            attackers = set(entry["malicious"])
            malicious = [pid in attackers for pid in scores["partition"]]
            for signal, values in scores.items():
                if signal != "partition":
                    pooled[signal] += values
                    labels[signal] += malicious
        positive = np.array(labels["combined"], dtype=bool)
        if not positive.any() or positive.all():
            continue
        aucs = ", ".join(_auc(signal, labels[signal], values) for signal, values in pooled.items())
        if "low" in pooled:  # two thresholds on two scores: no single one to sweep
            best = "n/a (a two-sided rule: `clipfed bench-replay` sweeps both thresholds)"
        else:
            read = "running" if len(pooled.get("running", [])) == len(positive) else "combined"
            recall, threshold = _best_recall(np.array(pooled[read]), positive, min_precision)
            at = "no threshold reaches the precision" if threshold is None else f"{read} >= {threshold:.2f}"
            best = f"{recall:.2f} ({at})"
        lines.append(f"| {row.setting} | {row.attack} | {row.row} | {int(positive.sum())} / {len(positive)} | "
                     f"{aucs} | {best} |")
    if not lines:
        return ""
    return ("| setting | attack | row | attackers / scored | AUC per score | best recall at precision "
            f">= {min_precision} |\n|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.values())


def _mean_or_nan(values: list[float | None]) -> float:
    """The mean of the values there are; NaN (a gap in a plot, not a 0) where there is none, as
    when every seed diverged."""
    present = [v for v in values if v is not None]
    return mean(present) if present else float("nan")


def _mean_curve(results: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Per round any seed reached, the mean over the seeds that have a value (seeds may differ in
    length: a single-shot window per seed, a run that failed early)."""
    by_round: dict[int, list[float | None]] = defaultdict(list)
    for result in results:
        for entry in result["rounds"]:
            by_round[entry["round"]].append(entry.get(key))
    rounds = sorted(by_round)
    return rounds, [_mean_or_nan(by_round[r]) for r in rounds]


def _label(row: Row) -> str:
    """A legend entry: the row's name, with its status where that is not a plain completed run."""
    return row.row if row.plain else f"{row.row} [{row.status}]"


def _windows(rows: list[Row]) -> list[tuple[int, int]]:
    """The closed attack windows (first, last round) of the rows' runs, each once."""
    found = {attack_window(r["config"]) for row in rows for r in row.results if r["config"]}
    return sorted((start, end) for start, end in found if end is not None)


def plot(rows: list[Row], out: Path) -> list[Path]:
    """Per setting and attack: ASR, MA and R-Acc per round (attack windows shaded); per setting: MA
    vs ASR by attack; per setting and attack: per-class accuracy of each row. Each row keeps one
    colour and marker (``clipfed.bench.style``); every figure names its teacher, seeds and runs'
    status, and keeps its legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.transforms import offset_copy

    from clipfed.bench.style import row_styles

    written: list[Path] = []
    style = row_styles(row.row for row in rows)
    by_setting_attack: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        by_setting_attack[(row.setting, row.attack)].append(row)
    for (setting, attack), group in by_setting_attack.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
        for number, row in enumerate(group):
            for ax, key in zip(axes, ("asr", "ma", "racc"), strict=True):
                x, y = _mean_curve(row.results, key)
                every = max(len(x) // 12, 1)
                # Identical curves must not hide each other: hollow markers, each row's smaller than the
                # one before (they nest), staggered along long curves, and the thick lines underneath.
                ax.plot(x, y, label=_label(row), markevery=(number % every, every), fillstyle="none",
                        markersize=4 + 1.6 * (len(group) - number), zorder=3 - style[row.row]["linewidth"] / 10,
                        **style[row.row])
        for ax, key in zip(axes, ("ASR", "MA", "R-Acc"), strict=True):
            for i, (first, last) in enumerate(_windows(group)):
                ax.axvspan(first - 0.5, last + 0.5, color="tab:red", alpha=0.08,
                           label="attack window" if i == 0 else None)
            ax.set(xlabel="round", ylabel=key, title=f"{key} per round", ylim=(-0.02, 1.02))
            ax.xaxis.get_major_locator().set_params(integer=True)
        _finish(fig, axes[0], f"{setting}, {attack}", group)
        written.append(_save(fig, out / f"curves-{setting}-{attack}.png"))

        fig, ax = plt.subplots(figsize=(13, 4.2), layout="constrained")
        with_final = [row for row in group if any((r.get("final") or {}).get("per_class_acc") for r in row.completed)]
        width = 0.8 / max(len(with_final), 1)
        for i, row in enumerate(with_final):
            finals = [r["final"]["per_class_acc"] for r in row.completed if (r.get("final") or {}).get("per_class_acc")]
            per_class = [_mean_or_nan([f[c] for f in finals]) for c in range(len(finals[0]))]
            ax.bar([c + i * width for c in range(len(per_class))], per_class, width, label=_label(row),
                   color=style[row.row]["color"], edgecolor="white", linewidth=0.3)
        classes = len(CLASS_NAMES)
        ax.set_xticks([c + 0.4 - width / 2 for c in range(classes)], CLASS_NAMES, rotation=20)
        ax.set(xlabel="class", ylabel="final accuracy", title="per-class accuracy of the final model", ylim=(0, 1))
        _finish(fig, ax, f"{setting}, {attack}", group)
        written.append(_save(fig, out / f"per-class-{setting}-{attack}.png"))

    for setting in sorted({r.setting for r in rows}):
        attacks = sorted({r.attack for r in rows if r.setting == setting})
        fig, axes = plt.subplots(1, len(attacks), figsize=(max(4.5 * len(attacks) + 3, 9), 4.2), squeeze=False,
                                 layout="constrained")
        for ax, attack in zip(axes[0], attacks, strict=True):
            taken: dict[tuple[float, float], int] = defaultdict(int)
            unplotted = []
            for row in by_setting_attack[(setting, attack)]:
                v = row.values()
                if v["asr_mean"] is None or v["ma_mean"] is None:  # no point rather than one at ASR 0
                    unplotted.append(f"{row.row} ({'diverged' if v['diverged'] == v['seeds'] else 'no ASR'})")
                    continue
                spot = (round(v["asr_mean"], 2), round(v["ma_mean"], 2))
                shift = taken[spot]  # rows on the same spot are drawn side by side, a few points apart
                taken[spot] += 1
                at = offset_copy(ax.transData, fig=fig, x=7 * shift, y=0, units="points")
                ax.plot(v["asr_mean"], v["ma_mean"], linestyle="none", color=style[row.row]["color"],
                        marker=style[row.row]["marker"], markersize=7, label=_label(row), transform=at)
            if unplotted:
                ax.text(0.01, 0.01, "not plotted: " + ", ".join(unplotted), transform=ax.transAxes, fontsize=6,
                        wrap=True)
            ax.set(xlabel="final ASR (lower is better)", ylabel="final MA", title=attack, xlim=(-0.05, 1.05),
                   ylim=(-0.02, 1.02))
        _finish(fig, axes[0][0], setting, [r for r in rows if r.setting == setting])
        written.append(_save(fig, out / f"scatter-{setting}.png"))
    return written


def _finish(fig: Any, ax: Any, title: str, rows: list[Row]) -> None:
    """The figure's title, its teacher, seeds and runs' status under the axes, and one legend
    outside the axes (entries from ``ax``, each row once)."""
    fig.suptitle(title, fontsize=10)
    width = max(int(fig.get_figwidth() * 9), 50)  # about the axes' width at this font size
    fig.supxlabel(textwrap.fill(caption(rows).strip(), width), fontsize=8)  # below the axes, clear of the legend
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU'})")


def overhead_line(rows: list[Row]) -> str:
    """CLIP-Fed's round time over FedAvg's under the same attack (same clients, same rounds)."""
    pairs = []
    for row in rows:
        if row.row == "clipfed":
            fedavg = next((r for r in rows if r.row == "fedavg" and (r.setting, r.attack) == (row.setting, row.attack)),
                          None)
            if fedavg is not None and None not in (clip := row.values()["round_s"], base := fedavg.values()["round_s"]):
                pairs.append((clip, base))
    if not pairs:
        return "- CLIP-Fed round-time overhead over FedAvg: not measured (no pair in this suite)"
    clip, base = mean(p[0] for p in pairs), mean(p[1] for p in pairs)
    return (f"- CLIP-Fed round time {clip:.1f} s vs FedAvg {base:.1f} s: overhead "
            f"{100 * (clip - base) / base:+.0f}% (includes evaluation and client training)")


def cache_line(results: list[dict[str, Any]]) -> str:
    hits = [r["server_data"].get("cache_hit") for r in results if "server_data" in r]
    hits = [h for h in hits if h is not None]
    if not hits:
        return "- teacher cache: no run needed the server dataset"
    return (f"- teacher-output cache: {sum(hits)} of {len(hits)} runs reused the server dataset and its "
            f"teacher outputs ({100 * sum(hits) / len(hits):.0f}% hit rate)")


def run_commits_line(results: list[dict[str, Any]]) -> str:
    """The commits the runs were made at: a report regenerated later (finished runs are skipped)
    is written at a newer commit than its numbers."""
    if not results:
        return "- runs made at commit: no run yet"
    commits: dict[str, int] = defaultdict(int)
    for result in results:
        commits[str(result.get("versions", {}).get("git_commit", "unknown"))[:12]] += 1
    return "- runs made at commit " + ", ".join(f"`{c}` ({n} run{'s' if n > 1 else ''})" for c, n in commits.items())


def _round_minutes(rows: list[Row]) -> float:
    return sum(e["round_seconds"] for row in rows for r in row.results for e in r["rounds"]) / 60


def write_report(suite: Suite, rows: list[Row], plots: list[Path], out: Path, teacher_labels: set[str],
                 elapsed: float, warm_starts: str = "", budget: str = "", coverage: str = "") -> Path:
    """``report.md``: provenance, the tables (and the durable table for a suite with an attack
    window), notes on diverged and skipped rows, detection separability and the plots; ``coverage``
    says which planned runs a partial report lacks."""
    info = versions()
    lines = [
        f"# Benchmark: suite `{suite.name}`", "", suite.description, "",
        f"- command: `{shlex.join(['clipfed', *sys.argv[1:]]) if sys.argv else 'clipfed bench'}`",
        f"- report written at commit `{info['git_commit']}`",
        run_commits_line([r for row in rows for r in row.results]),
        f"- machine: {machine()}; python {info['python']}, flwr {info['flwr']}",
        f"- wall time of this invocation: {elapsed / 60:.1f} min (finished runs are skipped, not rerun); "
        f"the {sum(len(r.results) for r in rows)} runs' rounds took {_round_minutes(rows):.0f} min in all",
        f"- teacher: {', '.join(sorted(teacher_labels)) or 'none'}",
        overhead_line(rows),
        cache_line([r for row in rows for r in row.results]),
    ]
    if coverage:
        lines.append(coverage)
    if budget:
        lines.append(f"- attackers' budget `{budget}`: {suite.budgets[budget] or 'as benign clients'}")
    if any("reference" in label for label in teacher_labels):
        lines.append("- **These CLIP-Fed and teacher-only numbers use the offline `reference` teacher "
                     "(a stand-in trained on the public pool or, in rows named `-strong-teacher`, on the clean "
                     "train split), not CLIP.**")
    if warm_starts:
        lines += ["", warm_starts]
    start = "its setting and seed's" if suite.pretrain_per_seed else "its setting's"
    lines += ["", "Final MA, ASR and R-Acc (ASR on the attack's triggered test images: those whose true class "
              "is not the target, or the flip-source class for label flipping; R-Acc: the share of the same "
              "images given their true label), mean ± std over seeds whose final model is finite (`diverged`: "
              "NaN/Inf parameters or logits, no metric); detection pooled over the attack window. Every run "
              f"starts from {start} clean FedAvg pre-training (`init-model`).", "", paper_table(rows),
              "All columns:", "", markdown_table(rows), diverged_notes(rows), skipped_notes(rows)]
    if suite.window is not None:
        lines += [f"## Durable protocol (W={suite.window.attack_rounds} attacked, D={suite.window.clean_rounds} clean "
                  "rounds)", "", "Per run in `durable.json` (with each attacked round's detection and the reason "
                  "of every n/a); here mean ± std over seeds.", "", durable_table(rows)]
    separability = separability_table(rows)
    if separability:
        lines += ["Detection scores: how well each signal ranks the attackers above the benign clients "
                  "(pooled over attacked rounds and seeds; AUC 0.5 is chance), and the best recall a "
                  "threshold on the combined score could reach at the precision in the last column's "
                  "header.", "", caption(rows), separability]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
