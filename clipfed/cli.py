"""The ``clipfed`` command: list components, run experiments through ``flwr run``, print tables.

Only light modules are imported here (argparse, pydantic's config, the registries' catalogues):
``clipfed --help`` and ``clipfed list`` need no torch, scikit-learn, open_clip or flwr, so each
command handler imports what it uses.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from clipfed.bench.cli import add_bench_parsers
from clipfed.config import LOCAL_DIR, ConfigError, RunConfig, parse_config_text
from clipfed.deploy.cli import add_deploy_parser
from clipfed.errors import UserError
from clipfed.guard.cli import add_guard_parsers, add_teacher_arguments, teacher_spec

# The short attack-vs-defense experiment `make demo` runs: CIFAR-10, 20 clients, Dirichlet 0.5,
# 4 BadNets attackers, 8 clients per round; once undefended, once with CLIP-Fed.
DEMO_CONFIG: dict[str, Any] = {
    "num-clients": 20,
    "num-malicious": 4,
    "attack": "badnets",
    "partition": "dirichlet",
    "dirichlet-alpha": 0.5,
    "num-server-rounds": 4,
    "fraction-train": 0.4,
    "batch-size": 64,
    "lr": 0.02,
}
DEMO_DEFENSES = ("fedavg", "clipfed")
ENGINES = {
    "flwr": "flwr run: a private SuperLink, Ray simulation",
    "inprocess": "in-process engine: the same ServerApp and ClientApp, no SuperLink or Ray",
}


def app_dir() -> Path:
    """The Flower App folder (the checkout holding pyproject.toml) that ``flwr run`` builds."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").exists():
        raise UserError(f"no pyproject.toml beside the package at {root}; "
                        "install clipfed from a checkout (pip install -e .)")
    return root


def parse_overrides(text: list[str] | None) -> dict[str, Any]:
    """``-c`` texts (``k=v`` pairs with TOML values, or a .toml file) into a dict; any other text
    raises ``ConfigError`` naming it (Flower's parser would drop it and run with defaults)."""
    return parse_config_text(text)


def resolved_config(overrides: dict[str, Any], base: dict[str, Any] | None = None,
                    num_supernodes: int | None = None) -> RunConfig:
    """Validate and pre-flight before anything starts (``ConfigError`` lists every problem); make
    paths absolute (the ServerApp runs elsewhere)."""
    from clipfed.data.cifar import DATA_DIR_ENV
    from clipfed.engines.preflight import preflight

    values = {**(base or {}), **overrides}
    values.setdefault("data-dir", os.environ.get(DATA_DIR_ENV, ""))
    cfg = preflight(values, num_supernodes=num_supernodes)
    updates = {"out_dir": str(Path(cfg.out_dir).expanduser().resolve())}
    for key in ("data_dir", "resume_from", "init_model", "teacher_checkpoint", "teacher_guard_probe",
                "synth_config"):
        if value := getattr(cfg, key):
            updates[key] = str(Path(value).expanduser().resolve())
    if cfg.teacher_model.startswith(LOCAL_DIR):  # open_clip reads it as given, from where the ServerApp runs
        folder = Path(cfg.teacher_model.removeprefix(LOCAL_DIR)).expanduser().resolve()
        updates["teacher_model"] = f"{LOCAL_DIR}{folder}"
    return cfg.model_copy(update=updates)


def cmd_list(args: argparse.Namespace) -> int:
    from clipfed.attacks import ATTACKS  # the registries' catalogues: no implementation is imported
    from clipfed.attacks.registry import DATA_PARTS, TRAINING_PARTS, UPDATE_PARTS
    from clipfed.defense import DEFENSES
    from clipfed.models import MODELS
    from clipfed.teacher import TEACHERS

    for title, registry in (("models", MODELS), ("attacks [data+training+update parts]", ATTACKS),
                            ("attack-data parts", DATA_PARTS), ("attack-training parts", TRAINING_PARTS),
                            ("attack-update parts", UPDATE_PARTS), ("defenses", DEFENSES), ("teachers", TEACHERS)):
        print(f"{title}:")
        for name, description in registry.describe().items():
            print(f"  {name:<12} {description}")
    return 0


def run_experiment(cfg: RunConfig, args: argparse.Namespace) -> Path:
    """Run one experiment (``flwr run``, or the in-process engine) and return its run folder."""
    from clipfed.runs.results import default_run_name

    if not cfg.run_name:
        cfg = cfg.model_copy(update={"run_name": default_run_name(cfg)})
    if args.engine == "inprocess":
        from clipfed.engines.inprocess import run_inprocess

        return run_inprocess(cfg, threads=os.cpu_count() or 1)
    from clipfed.engines.launch import Interrupted, flwr_run
    from clipfed.runs.results import mark_stopped

    run_dir = Path(cfg.out_dir) / cfg.run_name
    try:
        flwr_run(app_dir(), cfg.to_flower(), num_supernodes=args.num_supernodes or cfg.num_clients,
                 cpus_per_client=args.cpus_per_client, gpus_per_client=args.gpus_per_client,
                 timeout=args.timeout)
    except BaseException as err:
        mark_stopped(run_dir, "interrupted" if isinstance(err, Interrupted | KeyboardInterrupt) else "failed")
        raise
    return run_dir


def check_gpus_per_client(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Refuse ``--gpus-per-client`` that no run could honour before anything starts; print the note
    when CUDA is visible but the ClientApps get none. The in-process engine has no Ray actors to
    give a GPU: its clients run on ``device`` directly, so the flag there would be silently ignored."""
    if args.engine == "inprocess":
        if args.gpus_per_client:
            raise UserError(f"--gpus-per-client {args.gpus_per_client:g} applies to --engine flwr (Ray's "
                            "client resources); the in-process engine trains on the run config's device "
                            "(device='auto': CUDA when visible)")
        return
    from clipfed.engines.launch import client_gpu_note

    if note := client_gpu_note(args.gpus_per_client, cfg.device):
        print(f"[clipfed] {note}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace, base: dict[str, Any] | None = None) -> int:
    from clipfed.checks import few_updates_note, unused_keys

    cfg = resolved_config(parse_overrides(args.run_config), base, args.num_supernodes)  # ConfigError: exit 2
    check_gpus_per_client(args, cfg)
    for note in unused_keys(cfg):  # before the run starts; the ServerApp records them too
        print(f"[clipfed] note: {note}: it changes nothing in this run", file=sys.stderr, flush=True)
    if warning := few_updates_note(cfg):
        print(f"[clipfed] warning: {warning}", file=sys.stderr, flush=True)
    run_experiment(cfg, args)
    return 0  # the ServerApp printed the progress lines and the table


def cmd_demo(args: argparse.Namespace) -> int:
    """FedAvg and CLIP-Fed under the same attack, then one table."""
    base = resolved_config(parse_overrides(args.run_config), DEMO_CONFIG, args.num_supernodes)  # ConfigError: exit 2
    check_gpus_per_client(args, base)
    from clipfed.runs.results import default_run_name, load_result, results_table

    run_dirs = []
    for defense in DEMO_DEFENSES:
        cfg = base.model_copy(update={"defense": defense})
        name = f"{base.run_name}-{defense}" if base.run_name else default_run_name(cfg)
        cfg = cfg.model_copy(update={"run_name": name})
        print(f"[clipfed demo] {defense}: {cfg.num_server_rounds} rounds, {cfg.attack} from "
              f"{cfg.num_malicious} of {cfg.num_clients} clients ({ENGINES[args.engine]})", flush=True)
        run_dirs.append(run_experiment(cfg, args))
    results = [load_result(d) for d in run_dirs]
    print("\n" + results_table(results))
    teacher = next((r["server_data"]["teacher"] for r in results if "server_data" in r), None)
    if teacher:
        print(f"\nteacher: {teacher}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from clipfed.runs.results import load_result, results_table, rounds_table

    results = [load_result(Path(d)) for d in args.run_dirs]
    print("\n\n".join(rounds_table(r) for r in results) if args.rounds else results_table(results))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from urllib.error import URLError

    from clipfed.data.cifar import DATA_DIR_ENV, download_cifar10

    try:
        folder = download_cifar10(args.data_dir)
    except URLError as err:  # offline: the one input that can fix it is another source
        raise UserError(f"download failed ({err.reason}); offline, point --data-dir or {DATA_DIR_ENV} "
                        "at a copy (cifar10/ of shared/assets, see its README.md)") from None
    print(f"CIFAR-10 downloaded to {folder}")
    return 0


def cmd_synth_build(args: argparse.Namespace) -> int:
    import json
    import tomllib

    from clipfed.data.cifar import DATA_DIR_ENV
    from clipfed.data_synth import SynthConfig, build_server_dataset

    if args.config and not Path(args.config).is_file():
        raise UserError(f"--config {args.config}: no such file; allowed: a SynthConfig .toml or .json file")
    try:
        cfg = SynthConfig.from_file(args.config) if args.config else SynthConfig()
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--config {args.config}: not a readable TOML/JSON file ({err})") from None
    except ValueError as err:  # from_file's message names the file and each bad key
        raise UserError(str(err)) from None
    data_dir = args.data_dir or cfg.data_dir or os.environ.get(DATA_DIR_ENV, "")
    cfg = cfg.model_copy(update={"data_dir": data_dir})
    result = build_server_dataset(cfg, Path(args.store))
    manifest = result.dataset.manifest
    print(f"artifact: {result.dataset.path}")
    print(f"teacher:  {manifest['teacher']['label']} (weights sha256 {manifest['teacher']['weights_digest'][:16]})")
    print(f"data:     images+labels sha256 {manifest['data_digest'][:16]}")
    if result.cache_hit:
        print("cache hit: verified the existing artifact; the teacher made no forward pass")
    for stage, seconds in result.seconds.items():
        print(f"  {stage:<18} {seconds:8.2f} s")
    counts = manifest["counts"]
    print(f"images: {counts['total']} ({sum(counts['clean_per_class'])} clean, "
          f"augmented {counts['augmented_by_kind']})")
    pairs = zip(manifest["classes"], counts["clean_per_class"], strict=True)
    print("clean per class: " + ", ".join(f"{c} {n}" for c, n in pairs))
    return 0


def cmd_synth_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from clipfed.data.cifar import DATA_DIR_ENV
    from clipfed.data_synth.service import create_app

    uvicorn.run(create_app(Path(args.store), args.data_dir or os.environ.get(DATA_DIR_ENV, "")),
                host=args.host, port=args.port)
    return 0


def cmd_teacher_eval(args: argparse.Namespace) -> int:
    import re
    import time

    import numpy as np
    import torch

    from clipfed.data import load_cifar10
    from clipfed.data.cifar import DATA_DIR_ENV
    from clipfed.data_synth import SynthConfig
    from clipfed.data_synth.pipeline import public_pool
    from clipfed.engines.preflight import teacher_problems
    from clipfed.teacher import create_teacher, teacher_pool

    if args.limit < 0:
        raise UserError(f"--limit {args.limit}: allowed: 0 (every test image) or a positive count")
    spec = teacher_spec(args)
    keys = {"teacher": args.teacher, "teacher-model": args.teacher_model, "teacher-pretrained": args.teacher_pretrained}
    if args.teacher == "openclip" and (problems := teacher_problems(keys)):
        # the flags are named as the run keys: "teacher-model='x'" reads "--teacher-model 'x'"
        raise UserError(re.sub(r"\b(teacher-model|teacher-pretrained)=", r"--\1 ", "; ".join(problems)))
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV, "")
    train, test = load_cifar10(data_dir)
    pool = public_pool(SynthConfig(seed=args.seed, data_dir=data_dir))
    teacher = create_teacher(spec, teacher_pool(spec, pool, train))
    images = np.asarray(test.images[: args.limit] if args.limit else test.images)
    labels = torch.from_numpy(np.asarray(test.labels[: len(images)], dtype=np.int64))
    started = time.perf_counter()
    embeddings = teacher.encode_images(images)
    rate = len(images) / (time.perf_counter() - started)
    from clipfed.evaluation import format_metric
    from clipfed.training import per_class_accuracy, predictions

    pred = predictions(teacher.zero_shot_logits(embeddings, teacher.class_prototypes(test.classes)))

    print(f"teacher: {teacher.label}")
    print(f"dataset: {args.dataset} test, {len(images)} images")
    print(f"zero-shot top-1: {(pred == labels).double().mean().item():.4f}   ({rate:.0f} images/s)")
    for name, acc in zip(test.classes, per_class_accuracy(pred, labels, len(test.classes)), strict=True):
        print(f"  {name:<12} {format_metric(acc)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipfed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models, attacks, attack parts, defenses, teachers").set_defaults(func=cmd_list)
    for name, helptext in (("run", "run one experiment through flwr run (simulation)"),
                           ("demo", "FedAvg vs CLIP-Fed under BadNets, the experiment of `make demo`")):
        run = sub.add_parser(name, help=helptext)
        run.add_argument("--run-config", "-c", action="append",
                         help='overrides, e.g. "num-server-rounds=5 defense=\'fedavg\'"')
        run.add_argument("--num-supernodes", type=int, default=None,
                         help="virtual SuperNodes (default: num-clients)")
        run.add_argument("--cpus-per-client", type=int, default=1)
        run.add_argument("--gpus-per-client", type=float, default=0.0, metavar="F",
                         help="GPUs Ray reserves per ClientApp with --engine flwr (client-resources-num-gpus); "
                              "a fraction shares one GPU: 0.25 runs four clients on it (default 0: clients "
                              "see no GPU)")
        run.add_argument("--engine", choices=list(ENGINES), default="flwr" if name == "run" else "inprocess",
                         help="flwr run (the default for run) or the in-process engine (the default for "
                              "demo: no SuperLink or Ray start-up, so it fits 10 minutes on 2 cores)")
        run.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
        run.set_defaults(func=cmd_run if name == "run" else cmd_demo)
    table = sub.add_parser("table", help="print the MA/ASR table of finished runs")
    table.add_argument("run_dirs", nargs="+")
    table.add_argument("--rounds", action="store_true",
                       help="each run round by round: MA, ASR, R-Acc, exclusions, the server's seconds and "
                            "its share of the round")
    table.set_defaults(func=cmd_table)
    synth = sub.add_parser("synth", help="the server-dataset synthesis service").add_subparsers(
        dest="synth_command", required=True)
    build = synth.add_parser("build", help="build (or find in the cache) a server dataset")
    build.add_argument("--config", help="a SynthConfig TOML/JSON file (default: the defaults)")
    build.add_argument("--store", required=True, help="artifact store folder")
    build.add_argument("--data-dir", default="", help="CIFAR-10 location (else CLIPFED_DATA_DIR)")
    build.set_defaults(func=cmd_synth_build)
    serve = synth.add_parser("serve", help="serve builds over HTTP (FastAPI)")
    serve.add_argument("--store", required=True, help="artifact store folder")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data-dir", default="", help="CIFAR-10 location (else CLIPFED_DATA_DIR)")
    serve.set_defaults(func=cmd_synth_serve)
    teacher = sub.add_parser("teacher", help="teacher tools").add_subparsers(dest="teacher_command", required=True)
    evaluate = teacher.add_parser("eval", help="zero-shot top-1, per-class accuracy and images/s")
    add_teacher_arguments(evaluate)
    evaluate.add_argument("--dataset", choices=["cifar10"], default="cifar10")
    evaluate.add_argument("--data-dir", default="", help="CIFAR-10 location (else CLIPFED_DATA_DIR)")
    evaluate.add_argument("--seed", type=int, default=0, help="the split whose public pool trains 'reference'")
    evaluate.add_argument("--limit", type=int, default=0, help="evaluate the first N test images only (0: all 10,000)")
    evaluate.set_defaults(func=cmd_teacher_eval)
    add_guard_parsers(teacher)
    add_deploy_parser(sub)
    add_bench_parsers(sub)
    download = sub.add_parser("download", help="download CIFAR-10 with torchvision (online)")
    download.add_argument("--data-dir", required=True)
    download.set_defaults(func=cmd_download)
    return parser


# Errors that mean bad input (exit 2) besides UserError and ConfigError, by module and class name:
# they live in modules that import torch or flwr, and `clipfed list` must not load those to catch them.
USER_ERRORS = ("clipfed.data.cifar.DataNotFoundError", "clipfed.runs.results.RunExistsError",
               "clipfed.deploy.cluster.DeployError", "clipfed.data_synth.artifact.ArtifactIntegrityError")


def loaded_classes(*qualnames: str) -> tuple[type[BaseException], ...]:
    """The named exception classes whose modules are imported: an error can only have been raised
    by a module that was loaded, so catching it needs no import (and a module not loaded is skipped)."""
    found = []
    for qualname in qualnames:
        module, _, name = qualname.rpartition(".")
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Bad input (``UserError`` and the errors that name a bad key, file or
    name) ends as ``clipfed: <message>`` on stderr with exit 2, a run that failed with exit 1 (its
    message names where its logs are), SIGINT/SIGTERM/SIGHUP with 128 + the signal number. Any other
    exception is a bug and keeps its traceback."""
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # what the command was: benchmarks record it
    try:
        return int(args.func(args))
    except (UserError, ConfigError) as err:
        print(f"clipfed: {err}", file=sys.stderr)
        return 2
    except BaseException as err:
        if isinstance(err, loaded_classes(*USER_ERRORS)):
            code = 2
        elif isinstance(err, loaded_classes("clipfed.engines.launch.FlowerRunError")):
            code = 1
        elif isinstance(err, loaded_classes("clipfed.engines.launch.Interrupted")):
            code = 128 + err.signum  # type: ignore[attr-defined]
        elif isinstance(err, KeyboardInterrupt):
            print("clipfed: interrupted", file=sys.stderr)
            return 128 + signal.SIGINT
        else:
            raise
        print(f"clipfed: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
