"""CLIP-Fed efficacy table: the control rows (FedAvg without and under attack, teacher-only) and
CLIP-Fed's variants and ablations, same data, seeds and model, through the in-process engine
(the real ServerApp and ClientApp code). Prints a Markdown table and writes it beside the runs.

    python scripts/bench_clipfed.py --out runs/bench-clipfed --rounds 10 --seeds 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, pstdev

from clipfed.config import RunConfig
from clipfed.inprocess import run_inprocess
from clipfed.results import load_result

ROWS: dict[str, dict[str, object]] = {
    "fedavg-no-attack": {"defense": "fedavg", "num-malicious": 0},
    "fedavg-attack": {"defense": "fedavg"},
    "teacher-only": {"defense": "teacher-only"},
    "clipfed": {"defense": "clipfed"},
    "clipfed-pre-only": {"defense": "clipfed", "clipfed-post": False},
    "clipfed-post-only": {"defense": "clipfed", "clipfed-pre": False},
    "clipfed-no-proto-loss": {"defense": "clipfed", "clipfed-lambda-pc": 0.0},
    "clipfed-no-kl": {"defense": "clipfed", "clipfed-lambda-kl": 0.0},
    "clipfed-no-freq-aug": {"defense": "clipfed", "clipfed-augmented": False},
}


def detection(result: dict) -> tuple[float | None, float | None]:
    start = result["config"]["attack-start-round"]
    rounds = [r for r in result["rounds"] if r["round"] >= max(start, 1)]
    tp = sum(r["detection"]["tp"] for r in rounds)
    fp = sum(r["detection"]["fp"] for r in rounds)
    fn = sum(r["detection"]["fn"] for r in rounds)
    return (tp / (tp + fn) if tp + fn else None, tp / (tp + fp) if tp + fp else None)


def fmt(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"{mean(vals):.3f}" + (f" ± {pstdev(vals):.3f}" if len(vals) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-clipfed")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], help="extra run-config k=v for every row")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from flwr.common.config import parse_config_args

    common = {"num-clients": 20, "num-malicious": 4, "fraction-train": 0.5, "batch-size": 64,
              "lr": 0.02, "num-server-rounds": args.rounds, "out-dir": str(Path(args.out).resolve()),
              **parse_config_args(args.set)}
    table: dict[str, list[dict]] = {}
    for row in args.rows.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = RunConfig.from_flower({**common, **ROWS[row], "seed": seed, "run-name": f"{row}-s{seed}"})
            run_dir = Path(cfg.out_dir) / cfg.run_name
            if not (run_dir / "result.json").exists() or load_result(run_dir)["status"] != "completed":
                if run_dir.exists():
                    raise SystemExit(f"{run_dir} holds an unfinished run; move it away first")
                run_inprocess(cfg, threads=args.threads)
            table.setdefault(row, []).append(load_result(run_dir))

    lines = ["| row | final MA | final ASR | detection recall | precision | server s/round |",
             "|---|---|---|---|---|---|"]
    for row, results in table.items():
        recall, precision = zip(*(detection(r) for r in results), strict=True)
        server = [mean(x["server_seconds"] for x in r["rounds"][1:]) for r in results]
        lines.append(f"| {row} | {fmt([r['final']['ma'] for r in results])} | "
                     f"{fmt([r['final']['asr'] for r in results])} | {fmt(list(recall))} | "
                     f"{fmt(list(precision))} | {fmt(server)} |")
    teacher = next((r["server_data"]["teacher"] for rs in table.values() for r in rs if "server_data" in r), None)
    text = "\n".join(lines) + (f"\n\nteacher: {teacher}\n" if teacher else "\n")
    print(text)
    Path(args.out, "table.md").write_text(text)
    Path(args.out, "common-config.json").write_text(json.dumps(common, indent=2))


if __name__ == "__main__":
    main()
