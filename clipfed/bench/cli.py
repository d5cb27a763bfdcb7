"""``clipfed bench``, ``clipfed bench-cost``, ``clipfed bench-device`` and ``clipfed bench-replay``."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from clipfed.bench.suites import SUITES
from clipfed.errors import UserError

if TYPE_CHECKING:
    from clipfed.bench.runner import Cell
    from clipfed.bench.suites import Suite


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _ints(option: str, text: str | None, minimum: int) -> list[int] | None:
    """A comma list of integers >= ``minimum`` (None when not given); ``UserError`` naming the option."""
    items = _csv(text)
    if items is None:
        return None
    numbers = [int(t) if t.removeprefix("-").isdecimal() else None for t in items]
    if bad := [t for t, n in zip(items, numbers, strict=True) if n is None or n < minimum]:
        raise UserError(f"{option} {text}: {', '.join(bad)} is not an integer >= {minimum}; "
                        f"allowed: a comma list such as {minimum},{minimum + 1}")
    return [n for n in numbers if n is not None]


def _at_least(option: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise UserError(f"{option} {value:g}: allowed: {minimum:g} or more")


def cmd_bench(args: argparse.Namespace) -> int:
    from clipfed.bench.runner import existing_runs, override_problems, plan, run_suite
    from clipfed.config import KEY_OF_FIELD, ConfigError, parse_config_text
    from clipfed.engines.preflight import preflight

    suite = SUITES[args.suite]
    seeds = _ints("--seeds", args.seeds, 0)
    _at_least("--workers", args.workers, 1)
    _at_least("--threads", args.threads, 0)
    budget = args.budget or next(iter(suite.budgets), "")
    out = Path(args.out_dir or f"runs/bench-{suite.name}{'-' + budget if budget else ''}").resolve()
    if args.data_dir:
        os.environ["CLIPFED_DATA_DIR"] = str(Path(args.data_dir).resolve())
    unknown = set(_csv(args.settings) or []) - set(suite.settings)
    if unknown:
        raise UserError(f"--settings: unknown {sorted(unknown)}; suite {suite.name!r} has {list(suite.settings)}")
    variants = None if args.variants is None else [v for v in _csv(args.variants) or [] if v != "none"]
    if args.run_config:  # Flower's hyphenated keys, also where the text used field names (teacher_model)
        overrides = {KEY_OF_FIELD.get(key, key): value for key, value in parse_config_text(args.run_config).items()}
        suite = replace(suite, overrides=overrides)
    cells = plan(suite, _csv(args.defenses), _csv(args.attacks), seeds, _csv(args.settings), budget or None,
                 variants)
    if wrong := override_problems(suite, cells, out):
        raise ConfigError.listing(wrong)
    started = time.perf_counter()
    coverage = ""
    if args.report_only:
        runs, missing = existing_runs(suite, cells, out)
        if not runs:
            raise UserError(f"--report-only: no run of this plan in {out / 'runs'}; run the suite first")
        found = {c.name for c, _ in runs}  # a control shared by attack columns is one run
        coverage = (f"- **partial**: {len(found)} of the {len(found | {c.name for c in missing})} runs planned "
                    f"for this command are in `{out.name}` (finished or not: see each row's status); not run "
                    "yet: " + (", ".join(dict.fromkeys(c.name for c in missing)) or "none"))
        return _write_outputs(suite, out, runs, started, budget, coverage)
    problems: list[str] = []
    for cell in cells:  # every config is checked before the first run starts; each problem once
        try:  # a Bulyan cell that can never aggregate is a result (n/a in the table), not a mistake
            preflight(cell.config(suite, out).to_flower(), idle_defense_ok=True)
        except ConfigError as err:
            problems += [p for p in err.problems if p not in problems]
    if problems:
        raise ConfigError.listing(problems)
    threads = args.threads or max((os.cpu_count() or 1) // args.workers, 1)
    runs = run_suite(suite, out, cells, threads=threads, workers=args.workers)
    return _write_outputs(suite, out, runs, started, budget, coverage)


def _write_outputs(suite: Suite, out: Path, runs: list[tuple[Cell, Path]], started: float, budget: str,
                   coverage: str) -> int:
    """The suite's tables, plots and report from ``runs``; prints the main table."""
    from clipfed.bench.report import (
        collect,
        durable_table,
        markdown_table,
        plot,
        skipped_notes,
        warm_start_lines,
        write_csv,
        write_durable_json,
        write_report,
    )

    rows = collect(runs)
    (out / "table.md").write_text(markdown_table(rows) + skipped_notes(rows))
    write_csv(rows, out / "table.csv")
    if suite.window is not None:
        (out / "durable.md").write_text(durable_table(rows))
        write_durable_json(rows, out / "durable.json")
    plots = plot(rows, out)
    teachers = {r.get("server_data", {}).get("teacher", "") for row in rows for r in row.results} - {""}
    report = write_report(suite, rows, plots, out, teachers, time.perf_counter() - started,
                          warm_start_lines(runs, suite.plateau), budget, coverage)
    print(durable_table(rows) if suite.window is not None else markdown_table(rows))
    print(f"[bench] {len(runs)} runs; report: {report}")
    return 0


def cmd_bench_cost(args: argparse.Namespace) -> int:
    from clipfed.bench.cost import (
        cost_table,
        merge_rows,
        plot_cost,
        provenance_lines,
        run_cost,
        summary_lines,
        teacher_line,
    )
    from clipfed.bench.report import machine
    from clipfed.data import load_cifar10
    from clipfed.defense import DEFENSES, list_defenses
    from clipfed.models import MODELS
    from clipfed.runs.results import versions

    # Everything is checked before the first measurement: a bad name must not become a table row.
    defenses = _csv(args.defenses) or [d for d in list_defenses() if d != "teacher-only"]
    if unknown := [d for d in defenses if d not in list_defenses()]:
        raise UserError(f"--defenses: unknown {', '.join(unknown)}; allowed: {', '.join(list_defenses())}")
    if args.model not in MODELS.names():
        raise UserError(f"--model {args.model}: unknown; allowed: {', '.join(MODELS.names())}")
    sizes = tuple(_ints("--sizes", args.sizes, 1) or [10, 100, 1000])
    _at_least("--threads", args.threads, 1)
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout:g}: allowed: seconds > 0")
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else os.environ.get("CLIPFED_DATA_DIR", "")
    if any(DEFENSES.get(d).needs_server_data for d in defenses):
        load_cifar10(data_dir)  # DataNotFoundError says where it looked
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["clipfed", *sys.argv[1:]])
    commit = str(versions()["git_commit"])[:12]
    measured = [{**row, "commit": commit, "command": command}
                for row in run_cost(defenses, sizes, args.model, args.threads, data_dir, args.timeout)]
    rows = merge_rows(out / "cost.json", measured)
    (out / "cost.json").write_text(json.dumps(rows, indent=2) + "\n")
    sizes = tuple(sorted({r["updates"] for r in rows}))
    table = cost_table(rows, sizes) + "\n" + summary_lines(rows)
    header = (f"# Server aggregation cost per defense\n\n{provenance_lines(rows)}"
              f"- machine: {machine()}; {args.threads} torch threads\n- {teacher_line(rows)}\n\n")
    (out / "cost.md").write_text(header + table)
    plot_cost(rows, out / "cost.png")
    print(table)
    return 0


def cmd_bench_device(args: argparse.Namespace) -> int:
    import torch

    from clipfed.bench.device import FULL, QUICK, markdown, present_devices, run_device_bench
    from clipfed.devices import DeviceUnavailable, resolve_device
    from clipfed.models import MODELS

    preset = QUICK if args.quick else FULL
    models = _csv(args.models) or MODELS.names()
    if unknown := [m for m in models if m not in MODELS.names()]:
        raise UserError(f"--models: unknown {', '.join(unknown)}; allowed: {', '.join(MODELS.names())}")
    devices = _csv(args.devices) or present_devices()
    for spec in devices:
        try:
            resolve_device(spec)
        except (DeviceUnavailable, RuntimeError) as err:  # RuntimeError: torch's own for a malformed name
            raise UserError(f"--devices {spec}: {err}; allowed here: {', '.join(present_devices())}") from None
    clients = _ints("--clients", args.clients, 3)
    sizes = {"--steps": args.steps, "--batch-size": args.batch_size, "--eval-images": args.eval_images,
             "--repeats": args.repeats, "--threads": args.threads}
    for option, value in sizes.items():
        if value is not None:
            _at_least(option, value, 1)
    settings = replace(
        preset, models=tuple(models), devices=tuple(devices), steps=args.steps or preset.steps,
        batch_size=args.batch_size or preset.batch_size, eval_images=args.eval_images or preset.eval_images,
        clients=tuple(clients or preset.clients), repeats=args.repeats or preset.repeats,
        threads=args.threads or torch.get_num_threads(), amp=args.amp)
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    document = run_device_bench(settings, shlex.join(["clipfed", *args.argv]))
    (out / "bench-device.json").write_text(json.dumps(document, indent=2) + "\n")
    table = markdown(document)
    (out / "bench-device.md").write_text(table)
    print(table)
    print(f"[bench-device] wrote {out / 'bench-device.json'} and {out / 'bench-device.md'}")
    return 0


def _floats(option: str, text: str, low: float, high: float) -> list[float]:
    """A non-empty comma list of numbers in (low, high]; ``UserError`` naming the option."""
    values = []
    for item in _csv(text) or []:
        try:
            value = float(item)
        except ValueError:
            value = float("nan")
        if not low < value <= high:
            raise UserError(f"{option} {text}: {item} is not a number in ({low:g}, {high:g}]")
        values.append(value)
    if not values:
        raise UserError(f"{option} {text!r}: empty; allowed: a comma list of numbers in ({low:g}, {high:g}]")
    return values


def cmd_bench_replay(args: argparse.Namespace) -> int:
    from itertools import product

    from clipfed.bench.replay import Replay, Rule, pooled, recorded, replay, replay_table, scored_rounds
    from clipfed.config import SIGNALS, RunConfig
    from clipfed.runs.results import load_result

    for option, texts in (("--signals", args.signals or []), ("--low-signals", args.low_signals or [])):
        for text in texts:
            signals = _csv(text) or []
            if (not signals and option == "--signals") or (unknown := set(signals) - set(SIGNALS)):
                raise UserError(f"{option} {text!r}: {'unknown ' + str(sorted(unknown)) if signals else 'empty'}; "
                                f"allowed: a comma list of {', '.join(SIGNALS)}"
                                + ("" if option == "--signals" else ' (or "": off)'))
    weights = _floats("--weights", args.weights, 0.0, 1.0) if args.weights is not None else None
    thresholds = _floats("--thresholds", args.thresholds, 0.0, float("inf")) if args.thresholds is not None else None
    low_thresholds = (_floats("--low-thresholds", args.low_thresholds, 0.0, float("inf"))
                      if args.low_thresholds is not None else None)
    everything: list[Replay] = []
    unrecorded: list[Rule] = []
    unscored: list[str] = []
    for run_dir in args.run_dirs:
        result = load_result(Path(run_dir))
        if args.pooled and not scored_rounds(result):  # a suite's other rows: nothing to replay
            unscored.append(result.get("run_name", str(run_dir)))
            continue
        cfg = RunConfig.from_flower(result["config"])  # what the run used: the default of each option
        signal_sets = [tuple(_csv(s) or []) for s in (args.signals or [cfg.clipfed_signals])]
        low_sets = [tuple(_csv(s) or []) for s in (args.low_signals or [cfg.clipfed_low_signals])]
        # with the low side off its threshold means nothing: one rule, not one per low threshold
        grid = product(signal_sets, weights or [cfg.clipfed_history_weight], thresholds or [cfg.clipfed_z_threshold],
                       low_sets, low_thresholds or [cfg.clipfed_low_threshold])
        rules = list(dict.fromkeys(Rule(s, w, t, low, lt if low else Rule.low_threshold) for s, w, t, low, lt in grid))
        present = [r for r in rules if recorded(result, r.signals + r.low_signals)]
        absent = [r for r in rules if r not in present]
        replays = [replay(result, r) for r in present]
        everything.extend(replays)
        unrecorded.extend(absent)
        if not args.pooled:
            print(replay_table(result.get("run_name", str(run_dir)), replays, absent) + "\n")
    if args.pooled:
        rules_pooled = pooled(everything)
        replayed = {p.rule for p in rules_pooled}
        missing = [r for r in dict.fromkeys(unrecorded) if r not in replayed]
        left_out = [f"{len(unscored)} runs without CLIP-Fed scores"] if unscored else []
        left_out += [f"{len(unrecorded)} run-rule pairs not recorded"] if unrecorded else []
        print(replay_table(f"pooled over {len(args.run_dirs) - len(unscored)} runs"
                           + (f" (left out: {'; '.join(left_out)})" if left_out else ""), rules_pooled, missing)
              + "\n")
    return 0


def add_bench_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    suites = "\n".join(textwrap.fill(f"{name}: {suite.description}"
                                     + (f" (variant rows: {', '.join(suite.variants)})" if suite.variants else ""),
                                     width=100, subsequent_indent="    ")
                       for name, suite in SUITES.items())
    bench = sub.add_parser("bench", help="run a suite of attack x defense runs; tables, plots, report",
                           epilog=f"suites:\n{suites}", formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--suite", choices=list(SUITES), default="quick")
    bench.add_argument("--defenses", help="comma list (default: the suite's)")
    bench.add_argument("--attacks", help="comma list (default: the suite's)")
    bench.add_argument("--seeds", help="comma list (default: the suite's)")
    bench.add_argument("--settings", help="comma list of the suite's data settings (default: all)")
    bench.add_argument("--variants", help="comma list of the suite's variant rows, or none (default: all; "
                                          "`clipfed bench --help` lists each suite's)")
    bench.add_argument("--budget", help="the attackers' budget, for a suite that has several (durable: "
                                        "backfed-3x, the default, or equal)")
    bench.add_argument("--out-dir", help="suite folder (default runs/bench-<suite>, durable: "
                                         "runs/bench-durable-<budget>); finished runs are skipped")
    bench.add_argument("--data-dir", help="CIFAR-10 location (else CLIPFED_DATA_DIR)")
    bench.add_argument("--run-config", "-c", action="append",
                       help="run-config keys for every run that reads them, e.g. your own teacher: "
                            "\"teacher='openclip' teacher-pretrained='openai'\" (the runs that do not read a "
                            "key, FedAvg and the warm start for a teacher key, keep their config and are reused); "
                            "not the keys the grid sets per run")
    bench.add_argument("--workers", type=int, default=1,
                       help="runs at once, each in its own process (small CPU models: one per core)")
    bench.add_argument("--threads", type=int, default=0, help="torch threads per run (default: cores / workers)")
    bench.add_argument("--report-only", action="store_true",
                       help="write the tables, plots and report from the runs already in --out-dir, finished or "
                            "not, running nothing (a long suite's partial results; the report says what is missing)")
    bench.set_defaults(func=cmd_bench)
    cost = sub.add_parser("bench-cost", help="server seconds and peak memory per defense vs number of updates")
    cost.add_argument("--defenses", help="comma list (default: all but teacher-only)")
    cost.add_argument("--sizes", default="10,100,1000")
    cost.add_argument("--model", default="cnn")
    cost.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    cost.add_argument("--data-dir")
    cost.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    cost.add_argument("--out-dir", default="runs/bench-cost")
    cost.set_defaults(func=cmd_bench_cost)
    device = sub.add_parser("bench-device", help="training/evaluation images/s through the ClientApp and "
                            "evaluator vs bare torch, CLIP-Fed's server seconds, per model and device")
    device.add_argument("--models", help="comma list (default: every registered model)")
    device.add_argument("--devices", help="comma list of cpu, cuda, cuda:N (default: cpu, plus cuda when visible)")
    device.add_argument("--steps", type=int, help="SGD steps per training measurement (default 20; --quick 2)")
    device.add_argument("--batch-size", type=int, help="default 64; --quick 16")
    device.add_argument("--eval-images", type=int, help="clean test images (default 2000; --quick 100)")
    device.add_argument("--clients", help="replies per CLIP-Fed server step, comma list of >= 3 "
                                          "(default 10,100; --quick 3)")
    device.add_argument("--repeats", type=int, help="timed calls per rate, best kept (default 3; --quick 1)")
    device.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    device.add_argument("--amp", action="store_true", help="bf16 autocast and channels-last on CUDA (run key amp)")
    device.add_argument("--quick", action="store_true",
                        help="smallest sizes (seconds on a CPU; for tests): a smoke test, not a measurement")
    device.add_argument("--out-dir", default="runs/bench-device", help="folder for bench-device.json and .md")
    device.set_defaults(func=cmd_bench_device)
    replay_parser = sub.add_parser(
        "bench-replay", help="CLIP-Fed's exclusion rule replayed on a run's recorded scores: what other "
                             "signals, history weights and thresholds would have excluded (precision, recall, FPR)")
    replay_parser.add_argument("run_dirs", nargs="+", help="CLIP-Fed run folders (each with its result.json)")
    replay_parser.add_argument("--signals", action="append",
                               help="a comma list of kl, proto, trigger, geometry, sybil; repeat for several "
                                    "(default: the run's clipfed-signals)")
    replay_parser.add_argument("--weights", help="clipfed-history-weight values, comma list in (0, 1] "
                                                 "(default: the run's)")
    replay_parser.add_argument("--thresholds", help="clipfed-z-threshold values, comma list (default: the run's)")
    replay_parser.add_argument("--low-signals", action="append",
                               help="clipfed-low-signals: a comma list, or \"\" for off; repeat for several "
                                    "(default: the run's)")
    replay_parser.add_argument("--low-thresholds", help="clipfed-low-threshold values, comma list (default: the run's)")
    replay_parser.add_argument("--pooled", action="store_true",
                               help="one table summing each rule's counts over every run given (a suite's "
                                    "detection), instead of a table per run")
    replay_parser.set_defaults(func=cmd_bench_replay)
