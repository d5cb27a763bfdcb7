"""``clipfed bench-cost``: what each defense costs the server as the number of updates grows.

Each (defense, number of updates) is measured in a fresh subprocess on synthetic replies of the
benchmark model (the global model plus Gaussian noise, one reply per partition), so peak memory
is that process's own high-water mark above its baseline after the replies exist. Reports the
aggregation seconds (``aggregate_train``, validation included) and peak extra memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from clipfed.runs.results import teacher_name

DEFAULT_SIZES = (10, 100, 1000)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure(defense: str, num_updates: int, model: str, threads: int, data_dir: str) -> dict[str, Any]:
    """One measurement in this process (call it in a fresh one): seconds and peak MB."""
    from clipfed.flower_internals import server_identity

    with server_identity():  # the mock replies are Messages, which need a server's identity
        return _measure(defense, num_updates, model, threads, data_dir)


def _measure(defense: str, num_updates: int, model: str, threads: int, data_dir: str) -> dict[str, Any]:
    import torch
    from flwr.app import Array, ArrayRecord

    from clipfed.bench.synthetic import NODE_OFFSET, mock_train_replies
    from clipfed.checks import load_run_config
    from clipfed.defense import DEFENSES, create_defense
    from clipfed.models import create_model

    torch.set_num_threads(threads)
    cfg = load_run_config({"num-clients": num_updates, "num-malicious": 0, "model": model,
                           "defense": defense, "data-dir": data_dir, "krum-f": -1})
    inputs: dict[str, Any] = {}
    cache_hit, teacher = None, None
    if DEFENSES.get(defense).needs_server_data:
        from clipfed.data_synth.provider import obtain_server_dataset, synth_config_for

        inputs["server_data"], cache_hit = obtain_server_dataset(synth_config_for(cfg))
        teacher = inputs["server_data"].manifest["teacher"]
    strategy = create_defense(cfg, **inputs)
    torch.manual_seed(0)
    global_state = {k: v.numpy() for k, v in create_model(model, cfg.num_classes).state_dict().items()}
    strategy.global_arrays = ArrayRecord({k: Array(v) for k, v in global_state.items()})
    replies = mock_train_replies(global_state, num_updates, np.random.default_rng(0))
    strategy.sampled = {NODE_OFFSET + pid: pid for pid in range(num_updates)}
    baseline = _max_rss_mb()
    started = time.perf_counter()
    aggregate, _ = strategy.aggregate_train(1, replies)
    seconds = time.perf_counter() - started
    parts = {k: v for k, v in getattr(strategy, "details", {}).items() if k.endswith("_seconds")}
    return {"defense": defense, "updates": num_updates, "seconds": seconds, "parts": parts,
            "peak_mb": max(_max_rss_mb() - baseline, 0.0), "ok": aggregate is not None, "cache_hit": cache_hit,
            "teacher": None if teacher is None else teacher_name(teacher["label"], teacher["is_reference"])}


def run_cost(defenses: list[str], sizes: tuple[int, ...], model: str, threads: int, data_dir: str,
             timeout: float) -> list[dict[str, Any]]:
    rows = []
    for defense in defenses:
        for size in sizes:
            command = [sys.executable, "-m", "clipfed.bench.cost", defense, str(size), model, str(threads),
                       data_dir]
            try:
                out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
                last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
                row = json.loads(last) if last.startswith("{") else {
                    "defense": defense, "updates": size, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
            except subprocess.TimeoutExpired:
                row = {"defense": defense, "updates": size, "error": f"over {timeout:.0f} s"}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def merge_rows(previous: Path, measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier measurements in ``previous`` kept, the same (defense, updates) replaced: one more
    defense or size can be measured later (say, with a longer timeout) into the same table."""
    rows = {(r["defense"], r["updates"]): r for r in (json.loads(previous.read_text()) if previous.exists() else [])}
    rows.update({(r["defense"], r["updates"]): r for r in measured})
    return sorted(rows.values(), key=lambda r: (r["defense"], r["updates"]))


def provenance_lines(rows: list[dict[str, Any]]) -> str:
    """Which command at which commit measured which rows: a merged table mixes measurements."""
    groups: dict[tuple[str, str], dict[str, list[int]]] = {}
    for row in rows:
        key = (row.get("command", "not recorded"), row.get("commit", "not recorded"))
        groups.setdefault(key, {}).setdefault(row["defense"], []).append(row["updates"])
    return "".join(f"- `{command}` at commit `{commit}`: "
                   + ", ".join(f"{d} ({', '.join(map(str, n))})" for d, n in cells.items()) + "\n"
                   for (command, commit), cells in groups.items())


def cost_table(rows: list[dict[str, Any]], sizes: tuple[int, ...]) -> str:
    lines = ["| defense | " + " | ".join(f"{n} updates: s / peak MB" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    by_defense: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_defense.setdefault(row["defense"], {})[row["updates"]] = row
    for defense, cells in by_defense.items():
        shown = []
        for n in sizes:
            cell = cells.get(n, {"error": "not measured"})
            shown.append(cell["error"] if "error" in cell else f"{cell['seconds']:.3f} / {cell['peak_mb']:.0f}")
        lines.append(f"| {defense} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def summary_lines(rows: list[dict[str, Any]]) -> str:
    """CLIP-Fed's aggregation cost over FedAvg's, and the teacher-output cache hit rate."""
    lines = []
    seconds = {(r["defense"], r["updates"]): r["seconds"] for r in rows if "seconds" in r}
    parts = {r["updates"]: r.get("parts", {}) for r in rows if r["defense"] == "clipfed" and "seconds" in r}
    for (defense, n), value in sorted(seconds.items()):
        if defense == "clipfed" and ("fedavg", n) in seconds:
            split = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f} s" for k, v in parts.get(n, {}).items())
            lines.append(f"- {n} updates: CLIP-Fed {value:.2f} s vs FedAvg {seconds[('fedavg', n)]:.3f} s "
                         f"(+{value - seconds[('fedavg', n)]:.2f} s per round on the server)"
                         + (f"; {split}" if split else ""))
    hits = [r["cache_hit"] for r in rows if r.get("cache_hit") is not None]
    if hits:
        lines.append(f"- teacher-output cache: {sum(hits)} of {len(hits)} server-data loads were hits "
                     f"({100 * sum(hits) / len(hits):.0f}%); the first builds it once")
    return "\n".join(lines) + "\n"


def teacher_line(rows: list[dict[str, Any]]) -> str:
    """Which teacher the defenses that need one measured with (the offline stand-in says so)."""
    teachers = sorted({str(r["teacher"]) for r in rows if r.get("teacher")})
    return f"teacher: {', '.join(teachers) if teachers else 'none (no measured defense uses one)'}"


def plot_cost(rows: list[dict[str, Any]], path: Path) -> Path:
    """Seconds per round against updates, one line per defense in its own colour and marker
    (``clipfed.bench.style``); a defense with failed measurements says so in its legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipfed.bench.style import row_styles

    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    styles = row_styles(defenses)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for defense in defenses:
        points = sorted((r["updates"], r["seconds"]) for r in rows if r["defense"] == defense and "seconds" in r)
        failed = [r["updates"] for r in rows if r["defense"] == defense and "error" in r]
        label = defense + (f" (failed at {', '.join(map(str, failed))} updates)" if failed else "")
        if points:
            ax.plot(*zip(*points, strict=True), label=label, **styles[defense])
        else:  # nothing to draw, but the legend still lists it
            ax.plot([], [], label=f"{defense} (no measurement)", **styles[defense])
    ax.set(xscale="log", yscale="log", xlabel="client updates per round", ylabel="aggregation seconds",
           title=f"Server cost per round (synthetic replies, seed 0)\n{teacher_line(rows)}")
    ax.title.set_fontsize(9)
    fig.legend(loc="outside right upper", fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])))
