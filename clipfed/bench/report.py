"""A suite's outputs: ``table.md``/``table.csv`` (mean and std over seeds), PNG plots, ``report.md``.

Rows per data setting and attack: the controls (FedAvg without attack, teacher only), then each
defense and variant. Detection precision/recall are pooled over the attacked rounds of all seeds.
"""

from __future__ import annotations

import csv
import os
import platform
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

import numpy as np

from clipfed.bench.runner import Cell
from clipfed.runs.results import detection_totals, diverged_at, load_result, versions

COLUMNS = ("setting", "attack", "row", "seeds", "diverged", "ma_mean", "ma_std", "asr_mean", "asr_std",
           "recall", "precision", "server_s_per_round", "round_s")


@dataclass
class Row:
    setting: str
    attack: str
    row: str
    results: list[dict[str, Any]]

    def values(self) -> dict[str, Any]:
        """Means and stds over the seeds whose final model is finite (``diverged`` counts the
        others); None where no seed gives a value (all diverged, no attack, no rounds)."""
        finals = [r.get("final") or {} for r in self.results if diverged_at(r) is None]
        mas = [f["ma"] for f in finals if f.get("ma") is not None]
        asrs = [f["asr"] for f in finals if f.get("asr") is not None]
        tp, fp, fn = (sum(column) for column in zip(*(detection_totals(r) for r in self.results), strict=True))
        rounds = [entry for result in self.results for entry in result["rounds"] if entry["round"] >= 1]
        server = [entry["server_seconds"] for entry in rounds]
        round_seconds = [entry["round_seconds"] for entry in rounds]
        return {
            "setting": self.setting, "attack": self.attack, "row": self.row, "seeds": len(self.results),
            "diverged": len(self.results) - len(finals),
            "ma_mean": mean(mas) if mas else None, "ma_std": _std(mas),
            "asr_mean": mean(asrs) if asrs else None, "asr_std": _std(asrs),
            "recall": tp / (tp + fn) if tp + fn else None, "precision": tp / (tp + fp) if tp + fp else None,
            "server_s_per_round": mean(server) if server else None,
            "round_s": mean(round_seconds) if round_seconds else None,
        }


def _std(values: list[float]) -> float | None:
    return (pstdev(values) if len(values) > 1 else 0.0) if values else None


def collect(runs: list[tuple[Cell, Path]]) -> list[Row]:
    grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for cell, run_dir in runs:
        if not cell.pretrain:
            grouped[(cell.setting, cell.attack, cell.row)].append(load_result(run_dir))
    return [Row(s, a, r, results) for (s, a, r), results in grouped.items()]


def _pm(v: dict[str, Any], metric: str) -> str:
    """``mean ± std`` of ``metric`` over the finite seeds, marked when some or all seeds diverged."""
    if v["diverged"] == v["seeds"]:
        return "diverged"
    value, std = v[f"{metric}_mean"], v[f"{metric}_std"]
    shown = "n/a" if value is None else f"{value:.3f}" + (f" ± {std:.3f}" if v["seeds"] - v["diverged"] > 1 else "")
    return shown + (f" ({v['diverged']}/{v['seeds']} seeds diverged)" if v["diverged"] else "")


def _opt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| setting | attack | row | seeds | final MA | final ASR | det. recall | det. precision "
             "| server s/round | round s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        v = row.values()
        lines.append(f"| {v['setting']} | {v['attack']} | {v['row']} | {v['seeds']} | "
                     f"{_pm(v, 'ma')} | {_pm(v, 'asr')} | "
                     f"{_opt(v['recall'])} | {_opt(v['precision'])} | {_opt(v['server_s_per_round'])} | "
                     f"{_opt(v['round_s'], 1)} |")
    return "\n".join(lines) + "\n"


def paper_table(rows: list[Row]) -> str:
    """Per setting, the paper layout: one line per row (defense or control), final MA / ASR under
    each attack, mean over the finite seeds (``diverged`` where none is, a mark where some are not)."""
    blocks = []
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting]
        attacks = list(dict.fromkeys(r.attack for r in mine))
        cells = {(r.row, r.attack): r.values() for r in mine}
        lines = [f"**{setting}** (final MA / ASR)", "", "| row | " + " | ".join(attacks) + " |",
                 "|---|" + "---|" * len(attacks)]
        for name in dict.fromkeys(r.row for r in mine):
            shown = [_paper_cell(cells.get((name, a))) for a in attacks]
            lines.append(f"| {name} | " + " | ".join(shown) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _paper_cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "n/a"
    if v["diverged"] == v["seeds"]:
        return "diverged"
    if v["ma_mean"] is None or v["asr_mean"] is None:
        return "n/a"
    return f"{v['ma_mean']:.3f} / {v['asr_mean']:.3f}" + (f" ({v['diverged']}/{v['seeds']} diverged)"
                                                         if v["diverged"] else "")


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


def separability_table(rows: list[Row], min_precision: float = 0.8) -> str:
    """How well each detection signal ranks the attackers above the benign clients, pooled over the
    attacked rounds of all seeds: AUC per signal, and the best recall any threshold on the combined
    score reaches at the target precision (the configured threshold may sit elsewhere)."""
    from sklearn.metrics import roc_auc_score

    lines = []
    for row in rows:
        pooled: dict[str, list[float]] = defaultdict(list)
        labels: list[bool] = []
        for entry in (e for r in row.results for e in r["rounds"] if e["round"] >= 1):
            scores = entry.get("defense", {}).get("scores")
            if not scores:
                continue
            malicious = set(entry["malicious"])
            labels += [pid in malicious for pid in scores["partition"]]
            for signal, values in scores.items():
                if signal != "partition":
                    pooled[signal] += values
        positive = np.array(labels, dtype=bool)
        if not positive.any() or positive.all():
            continue
        aucs = ", ".join(f"{signal} {roc_auc_score(positive, values):.2f}" for signal, values in pooled.items())
        recall, threshold = _best_recall(np.array(pooled["combined"]), positive, min_precision)
        at = "no threshold reaches the precision" if threshold is None else f"score >= {threshold:.2f}"
        lines.append(f"| {row.setting} | {row.attack} | {row.row} | {int(positive.sum())} / {len(positive)} | "
                     f"{aucs} | {recall:.2f} ({at}) |")
    if not lines:
        return ""
    return ("| setting | attack | row | attackers / scored | AUC per signal | best recall at precision "
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
    rounds = [e["round"] for e in results[0]["rounds"]]
    return rounds, [_mean_or_nan([r["rounds"][i][key] for r in results]) for i in range(len(rounds))]


def plot(rows: list[Row], out: Path) -> list[Path]:
    """Per setting and attack: ASR and MA per round; per setting: MA vs ASR scatter by attack;
    per setting and attack: per-class accuracy of each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    style = _row_styles(rows)
    by_setting_attack: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        by_setting_attack[(row.setting, row.attack)].append(row)
    for (setting, attack), group in by_setting_attack.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for row in group:
            for ax, key in zip(axes, ("asr", "ma"), strict=True):
                ax.plot(*_mean_curve(row.results, key), label=row.row, **style[row.row])
        for ax, key in zip(axes, ("ASR", "MA"), strict=True):
            ax.set(xlabel="round", ylabel=key, title=f"{key} per round: {setting}, {attack}", ylim=(0, 1))
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[1].legend(fontsize=7, ncol=2)
        written.append(_save(fig, out / f"curves-{setting}-{attack}.png"))

        fig, ax = plt.subplots(figsize=(11, 4))
        width = 0.8 / len(group)
        classes = range(len(group[0].results[0]["final"]["per_class_acc"]))
        for i, row in enumerate(group):
            per_class = [_mean_or_nan([r["final"]["per_class_acc"][c] for r in row.results]) for c in classes]
            ax.bar([c + i * width for c in classes], per_class, width, label=row.row, color=style[row.row]["color"])
        ax.set(xlabel="class", ylabel="accuracy", title=f"per-class accuracy: {setting}, {attack}", ylim=(0, 1))
        ax.legend(fontsize=7, ncol=3)
        written.append(_save(fig, out / f"per-class-{setting}-{attack}.png"))

    for setting in sorted({r.setting for r in rows}):
        attacks = sorted({r.attack for r in rows if r.setting == setting})
        fig, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 4), squeeze=False)
        for ax, attack in zip(axes[0], attacks, strict=True):
            unplotted = []
            for row in by_setting_attack[(setting, attack)]:
                v = row.values()
                if v["asr_mean"] is None or v["ma_mean"] is None:  # no point rather than one at ASR 0
                    unplotted.append(f"{row.row} ({'diverged' if v['diverged'] == v['seeds'] else 'no ASR'})")
                    continue
                ax.scatter(v["asr_mean"], v["ma_mean"], color=style[row.row]["color"],
                           marker=style[row.row]["marker"])
                ax.annotate(row.row, (v["asr_mean"], v["ma_mean"]), fontsize=7)
            if unplotted:
                ax.text(0.01, 0.01, "not plotted: " + ", ".join(unplotted), transform=ax.transAxes, fontsize=6)
            ax.set(xlabel="final ASR (lower is better)", ylabel="final MA", title=f"{setting}: {attack}",
                   xlim=(-0.05, 1.05))
        written.append(_save(fig, out / f"scatter-{setting}.png"))
    return written


def _row_styles(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """One colour and marker per row name, the same in every plot, so 16 rows stay tellable apart
    (matplotlib's default cycle repeats after 10); CLIP-Fed's rows are thicker, CLIP-Fed itself black."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    cmap = matplotlib.colormaps["tab20"]
    assert isinstance(cmap, ListedColormap)  # tab20 is a listed colormap of 20 RGB tuples
    colors = cmap.colors
    assert isinstance(colors, Sequence)
    markers = "osD^v<>phX*"
    names = list(dict.fromkeys(row.row for row in rows))
    return {name: {"color": "black" if name == "clipfed" else colors[i % len(colors)],
                   "marker": markers[i % len(markers)],
                   "linewidth": 2.5 if name.startswith("clipfed") else 1.2} for i, name in enumerate(names)}


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
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
    commits: dict[str, int] = defaultdict(int)
    for result in results:
        commits[str(result.get("versions", {}).get("git_commit", "unknown"))[:12]] += 1
    return "- runs made at commit " + ", ".join(f"`{c}` ({n} run{'s' if n > 1 else ''})" for c, n in commits.items())


def _round_minutes(rows: list[Row]) -> float:
    return sum(e["round_seconds"] for row in rows for r in row.results for e in r["rounds"]) / 60


def write_report(suite_name: str, description: str, rows: list[Row], plots: list[Path], out: Path,
                 teacher_labels: set[str], elapsed: float) -> Path:
    info = versions()
    lines = [
        f"# Benchmark: suite `{suite_name}`", "", description, "",
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
    if any("reference" in label for label in teacher_labels):
        lines.append("- **These CLIP-Fed and teacher-only numbers use the offline `reference` teacher "
                     "(a stand-in trained on the public pool), not CLIP.**")
    lines += ["", "Final MA and ASR (ASR on the attack's triggered test images: those whose true class "
              "is not the target, or the flip-source class for label flipping), mean ± std over seeds "
              "whose final model is finite (`diverged`: NaN/Inf parameters or logits, no metric); "
              "detection pooled over attacked rounds. Every run starts from "
              "the same clean FedAvg pre-training (`init-model`).", "", paper_table(rows),
              "All columns:", "", markdown_table(rows), diverged_notes(rows), skipped_notes(rows)]
    separability = separability_table(rows)
    if separability:
        lines += ["Detection scores: how well each signal ranks the attackers above the benign clients "
                  "(pooled over attacked rounds and seeds; AUC 0.5 is chance), and the best recall a "
                  "threshold on the combined score could reach at the precision in the last column's "
                  "header.", "", separability]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
