"""``clipfed bench-device``: what the framework costs on each device, per model.

For each model and device it measures

- **training** images/s through the ClientApp's ``train`` handler (a mock TRAIN Message and
  Context, the run config's ``device``) and through a bare torch loop doing the same work: load
  the global weights, move the shard to the device, the same SGD steps at the same batch size,
  copy the weights back to the host. Their ratio (bare / ClientApp) is what config validation,
  data lookup, model construction and record conversion add per round;
- **evaluation** images/s through ``BackdoorEvaluator`` (clean and triggered test images) and
  through a bare no-grad loop over the same tensors on the device;
- **CLIP-Fed's server step**: the seconds of one ``aggregate_train`` on mock replies (the global
  model plus noise) at each number of clients, split into pre-aggregation scoring, aggregation
  and post-aggregation alignment as the round report records them.

Speed does not depend on content, so everything runs on random data of the real shapes
(``clipfed.bench.synthetic``): no dataset, no teacher. Each rate is the best of ``repeats`` timed
calls after one warm-up (CUDA kernels selected, caches filled); each server step one call after a
3-client warm-up round. A measurement that fails (a device out of memory, say) is recorded as its
error and the others go on.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.data.cifar import CACHE_DIR_ENV

WARMUP_CLIENTS = 3  # CLIP-Fed scores clients only from 3 replies on


@dataclass(frozen=True)
class DeviceBenchSettings:
    """What one ``bench-device`` run measures, and at which sizes."""

    models: tuple[str, ...]
    devices: tuple[str, ...]
    steps: int  # SGD steps per training call (one client's round)
    batch_size: int
    eval_images: int  # clean test images (the triggered ones are those not of the target class)
    clients: tuple[int, ...]  # replies per CLIP-Fed server step
    repeats: int
    threads: int  # torch CPU threads (the ClientApp's num-threads too)
    amp: bool
    server_clean_per_class: int  # the synthetic server dataset's clean images per class
    server_overrides: dict[str, Any]  # CLIP-Fed keys (the quick mode shrinks the probe and the steps)


# Presets; the command fills in models, devices and threads and replaces any size given as an option.
FULL = DeviceBenchSettings(models=(), devices=(), steps=20, batch_size=64, eval_images=2000, clients=(10, 100),
                           repeats=3, threads=0, amp=False, server_clean_per_class=464, server_overrides={})
# --quick: seconds on a CPU, for tests; the smallest sizes at which every code path still runs.
QUICK = DeviceBenchSettings(models=(), devices=(), steps=2, batch_size=16, eval_images=100, clients=(3,),
                            repeats=1, threads=0, amp=False, server_clean_per_class=10,
                            server_overrides={"clipfed-probe-size": 20, "clipfed-post-steps": 2,
                                              "clipfed-post-batch": 16})


def present_devices() -> list[str]:
    """``cpu``, plus ``cuda`` when CUDA is visible."""
    return ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The fastest of ``repeats`` timed calls of ``work`` after one untimed warm-up (CUDA: each
    timed from a synchronised start to a synchronised end)."""
    work()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        work()
        _sync(device)
        times.append(time.perf_counter() - started)
    return min(times)


def _peak_mib(device: torch.device) -> float | None:
    """The device's allocation high-water mark since the last reset (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


@contextmanager
def _private_cache(folder: Path) -> Iterator[None]:
    """Decoded-data caches of the fake dataset go to ``folder``, not the user's cache."""
    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_DIR_ENV, None)
        else:
            os.environ[CACHE_DIR_ENV] = previous


def measure_training(model_name: str, device: torch.device, spec: str, settings: DeviceBenchSettings,
                     workdir: Path) -> dict[str, Any]:
    """Images/s of one client's round through the ClientApp and through a bare loop.

    The ClientApp trains partition 0 of a one-client federation on a fake CIFAR of exactly
    ``steps x batch_size`` images (no public pool), so both paths take ``steps`` full batches.
    """
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

    from clipfed.app.client_app import train
    from clipfed.bench.synthetic import write_fake_cifar
    from clipfed.checks import load_run_config
    from clipfed.data import load_cifar10
    from clipfed.devices import autocast, place
    from clipfed.models import create_model
    from clipfed.training import CIFAR_MEAN, CIFAR_STD

    images_per_round = settings.steps * settings.batch_size
    data_dir = workdir / f"cifar-{images_per_round}"
    if not data_dir.exists():  # one per size, shared by the models and devices
        write_fake_cifar(data_dir, images_per_round)
    cfg = load_run_config({
        "num-clients": 1, "num-malicious": 0, "partition": "iid", "public-pool-fraction": 0.0,
        "model": model_name, "batch-size": settings.batch_size, "local-epochs": 1, "device": spec,
        "amp": settings.amp, "data-dir": str(data_dir)})
    torch.manual_seed(0)
    initial = create_model(cfg.model, cfg.num_classes).state_dict()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1,
                                                        "num-threads": settings.threads},
                      state=RecordDict(), run_config=cfg.to_flower())

    def via_clientapp() -> None:
        content = RecordDict({"arrays": ArrayRecord(initial), "config": ConfigRecord({"server-round": 1})})
        train(Message(content, dst_node_id=1, message_type=MessageType.TRAIN), context)

    shard, _ = load_cifar10(str(data_dir))
    images, labels = np.array(shard.images), np.asarray(shard.labels, dtype=np.int64)  # writable: torch shares it
    model = place(create_model(cfg.model, cfg.num_classes), device, settings.amp)  # built once, as a loop would
    mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)

    def bare_loop() -> dict[str, np.ndarray]:
        model.load_state_dict(initial)
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0).sub_(mean).div_(std)
        y = torch.from_numpy(labels).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
        model.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0)).to(device)
        for step in range(settings.steps):
            batch = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            with autocast(device, settings.amp):
                loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}  # the reply's weights

    _reset_peak(device)
    clientapp = images_per_round / best_seconds(via_clientapp, settings.repeats, device)
    peak = _peak_mib(device)
    bare = images_per_round / best_seconds(bare_loop, settings.repeats, device)
    return {"images": images_per_round, "clientapp_images_per_s": round(clientapp, 1),
            "bare_images_per_s": round(bare, 1), "overhead": round(bare / clientapp, 3), "clientapp_peak_mib": peak}


def measure_evaluation(model_name: str, device: torch.device, settings: DeviceBenchSettings) -> dict[str, Any]:
    """Images/s of one MA + ASR evaluation through ``BackdoorEvaluator`` and through a bare loop."""
    from clipfed.attacks import create_attack
    from clipfed.bench.synthetic import CLASSES, NUM_CLASSES, random_images
    from clipfed.checks import load_run_config
    from clipfed.data import ImageSet
    from clipfed.devices import autocast, place
    from clipfed.evaluation import BackdoorEvaluator
    from clipfed.models import create_model

    cfg = load_run_config({"attack": "badnets", "model": model_name})
    labels = np.arange(settings.eval_images) % NUM_CLASSES
    test = ImageSet(random_images(settings.eval_images, np.random.default_rng(1)), labels, CLASSES)
    evaluator = BackdoorEvaluator(test, create_attack(cfg), batch_size=cfg.eval_batch_size, device=device,
                                  amp=settings.amp)
    inputs = [evaluator.clean_x] + ([evaluator.triggered_x] if evaluator.triggered_x is not None else [])
    count = sum(len(x) for x in inputs)
    torch.manual_seed(0)
    model = place(create_model(cfg.model, cfg.num_classes), device, settings.amp)

    def bare_loop() -> torch.Tensor:
        model.eval()
        with torch.inference_mode(), autocast(device, settings.amp):
            predictions = [model(x[i:i + cfg.eval_batch_size]).argmax(1)
                           for x in inputs for i in range(0, len(x), cfg.eval_batch_size)]
        return torch.cat(predictions).cpu()

    evaluated = count / best_seconds(lambda: evaluator(model), settings.repeats, device)
    bare = count / best_seconds(bare_loop, settings.repeats, device)
    return {"images": count, "evaluator_images_per_s": round(evaluated, 1), "bare_images_per_s": round(bare, 1),
            "overhead": round(bare / evaluated, 3)}


def measure_server(model_name: str, device: torch.device, spec: str, settings: DeviceBenchSettings,
                   server_data: Any) -> list[dict[str, Any]]:
    """CLIP-Fed's ``aggregate_train`` seconds per number of clients, with the report's parts,
    after an untimed round of ``WARMUP_CLIENTS`` replies."""
    from flwr.app import Array, ArrayRecord

    from clipfed.bench.synthetic import NODE_OFFSET, mock_train_replies
    from clipfed.checks import load_run_config
    from clipfed.defense import create_defense
    from clipfed.models import create_model
    from clipfed.runs.report import AggregationReport

    torch.manual_seed(0)
    global_state = {k: v.numpy() for k, v in create_model(model_name, 10).state_dict().items()}

    def server_round(clients: int) -> dict[str, Any]:
        cfg = load_run_config({"defense": "clipfed", "num-clients": clients, "num-malicious": 0,
                               "model": model_name, "device": spec, "amp": settings.amp,
                               **settings.server_overrides})
        reports: list[AggregationReport] = []
        strategy = create_defense(cfg, server_data=server_data, on_report=reports.append)
        strategy.global_arrays = ArrayRecord({k: Array(v) for k, v in global_state.items()})
        replies = mock_train_replies(global_state, clients, np.random.default_rng(clients))
        strategy.sampled = {NODE_OFFSET + pid: pid for pid in range(clients)}
        _reset_peak(device)
        _sync(device)
        started = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, replies)
        _sync(device)
        seconds = time.perf_counter() - started
        if arrays is None:
            raise RuntimeError(f"CLIP-Fed aggregated nothing from {clients} mock replies")
        details = reports[-1].details
        return {"clients": clients, "seconds": round(seconds, 4),
                **{part: details.get(part) for part in ("pre_seconds", "aggregate_seconds", "post_seconds")},
                "excluded": len(reports[-1].excluded), "peak_mib": _peak_mib(device)}

    server_round(WARMUP_CLIENTS)
    return [server_round(clients) for clients in settings.clients]


def _attempt(what: str, measure: Callable[..., Any], *args: Any) -> Any:
    """``measure(*args)``, or ``{"error": ...}`` naming what failed: one device running out of
    memory must not lose the other rows (the table shows the error)."""
    try:
        return measure(*args)
    except Exception as err:
        print(f"[bench-device] {what}: {type(err).__name__}: {err}", flush=True)
        return {"error": f"{type(err).__name__}: {err}"}


def run_device_bench(settings: DeviceBenchSettings, command: str) -> dict[str, Any]:
    """Every measurement of ``settings``, with what the table's header needs."""
    from clipfed import __version__
    from clipfed.bench.synthetic import synthetic_server_dataset
    from clipfed.devices import describe, resolve_device
    from clipfed.flower_internals import server_identity
    from clipfed.runs.results import versions

    torch.set_num_threads(settings.threads)
    server_data = synthetic_server_dataset(settings.server_clean_per_class)
    rows = []
    with (server_identity(), tempfile.TemporaryDirectory(prefix="clipfed-bench-device-") as tmp,
          _private_cache(Path(tmp) / "cache")):
        for model_name in settings.models:
            for spec in settings.devices:
                device = resolve_device(spec)
                name = f"{model_name} on {describe(device)}"
                print(f"[bench-device] {name} ...", flush=True)
                row = {
                    "model": model_name, "device": spec, "device_name": describe(device),
                    "train": _attempt(f"{name} training", measure_training, model_name, device, spec, settings,
                                      Path(tmp)),
                    "eval": _attempt(f"{name} evaluation", measure_evaluation, model_name, device, settings),
                    "server": _attempt(f"{name} server step", measure_server, model_name, device, spec, settings,
                                       server_data),
                }
                print(f"[bench-device] {name}: {row}", flush=True)
                rows.append(row)
    return {
        "command": command, "commit": str(versions()["git_commit"])[:12], "clipfed": __version__,
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "settings": {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in asdict(settings).items()},
        "rows": rows,
    }


def _cell(section: dict[str, Any], key: str, digits: int = 0) -> str:
    """One table cell: the number, ``error`` where the measurement failed, ``n/a`` where none applies."""
    if "error" in section:
        return "error"
    value = section.get(key)
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown(document: dict[str, Any]) -> str:
    """The table ``bench-device.md`` holds, with the command and the machine."""
    s = document["settings"]
    devices = sorted({f"`{r['device']}`: {r['device_name']}" for r in document["rows"]})
    lines = [
        "# Device benchmark: the framework's cost over bare torch", "",
        f"- command: `{document['command']}` (commit `{document['commit']}`, clipfed {document['clipfed']}, "
        f"{document['date']})",
        f"- torch {document['torch']}, {document['cpu_count']} CPUs ({document['machine']}), "
        f"torch threads: {s['threads']}; devices: {'; '.join(devices)}; amp {'on' if s['amp'] else 'off'}",
        f"- training: {s['steps']} SGD steps at batch {s['batch_size']} ({s['steps'] * s['batch_size']} "
        "random images), one client's round; evaluation: "
        f"{s['eval_images']} clean test images plus their BadNets-triggered copies outside the target class; "
        f"best of {s['repeats']} after a warm-up",
        "- overhead = bare images/s / framework images/s (1.0: the framework adds nothing)", "",
        "| model | device | train img/s ClientApp | train img/s bare | overhead | "
        "eval img/s BackdoorEvaluator | eval img/s bare | overhead | train peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in document["rows"]:
        train, evaluation = r["train"], r["eval"]
        lines.append(f"| {r['model']} | {r['device_name']} | {_cell(train, 'clientapp_images_per_s')} | "
                     f"{_cell(train, 'bare_images_per_s')} | {_cell(train, 'overhead', 2)} | "
                     f"{_cell(evaluation, 'evaluator_images_per_s')} | {_cell(evaluation, 'bare_images_per_s')} | "
                     f"{_cell(evaluation, 'overhead', 2)} | {_cell(train, 'clientapp_peak_mib')} |")
    lines += [
        "", f"CLIP-Fed's server step: one `aggregate_train` on mock replies (the global model plus noise), "
        f"synthetic server dataset of {s['server_clean_per_class'] * 10} clean images and 2 copies each"
        + (f", overrides {s['server_overrides']}" if s["server_overrides"] else "") + ".", "",
        "| model | device | clients | seconds | pre | aggregate | post | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in document["rows"]:
        for step in r["server"] if isinstance(r["server"], list) else [r["server"]]:  # a dict: its error
            lines.append(f"| {r['model']} | {r['device_name']} | {step.get('clients', 'error')} | "
                         f"{_cell(step, 'seconds', 2)} | {_cell(step, 'pre_seconds', 2)} | "
                         f"{_cell(step, 'aggregate_seconds', 2)} | {_cell(step, 'post_seconds', 2)} | "
                         f"{_cell(step, 'peak_mib')} |")
    errors = [f"- {r['model']} on {r['device_name']}, {part}: {section['error']}"
              for r in document["rows"] for part in ("train", "eval", "server")
              if isinstance(section := r[part], dict) and "error" in section]
    return "\n".join(lines + (["", "Errors:", *errors] if errors else [])) + "\n"
