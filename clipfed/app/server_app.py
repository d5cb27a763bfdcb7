"""The ServerApp: validate config, build the defense strategy, run the rounds, record MA/ASR.

After every round it checkpoints (``clipfed.runs.checkpoint``); ``resume-from`` continues a run.
Evaluation, the defense's own computation, the teacher guard and the server dataset's build run
on the run config's ``device``, which ``result.json`` records (with whether ``amp`` was active).
"""

from __future__ import annotations

import random
import time
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from clipfed.attacks import create_attack
from clipfed.checks import few_updates_note, load_run_config, unused_keys
from clipfed.config import RunConfig
from clipfed.data import load_federated
from clipfed.defense import DEFENSES, create_defense
from clipfed.defense.sampler import PartitionSampler
from clipfed.defense.strategy import DefenseStrategy
from clipfed.devices import resolve_device
from clipfed.evaluation import BackdoorEvaluator, eval_subset, trigger_pool
from clipfed.models import create_model
from clipfed.runs.checkpoint import (
    load_init_model,
    load_resume,
    restore_rng_states,
    snapshot,
)
from clipfed.runs.results import RunRecorder, load_result, results_table

app = ServerApp()


def initial_model(cfg: RunConfig) -> torch.nn.Module:
    """The round-0 global model, identical for every run with the same seed and model."""
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, cfg.num_classes)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = load_run_config(context.run_config)  # a bad key stops here, before any training
    checkpoint, previous = load_resume(cfg) if cfg.resume_from else (None, None)
    random.seed(cfg.seed)
    train, test, split = load_federated(cfg)
    device = resolve_device(cfg.device)  # before the run folder: an absent GPU stops the run here
    recorder = RunRecorder.create(cfg, resumed=previous)
    try:  # from here on the run folder exists: however the run ends, its status says how
        recorder.payload["unused_keys"] = unused_keys(cfg)  # set, but read by no part of this run
        for note in recorder.payload["unused_keys"]:
            log(WARNING, "[clipfed] %s: it changes nothing in this run", note)
        if warning := few_updates_note(cfg):
            log(WARNING, "[clipfed] %s", warning)
        recorder.note_device(device, cfg.amp)
        evaluator = BackdoorEvaluator(eval_subset(test, cfg.eval_samples), create_attack(cfg), cfg.eval_batch_size,
                                      device, cfg.amp, trigger_pool(train, split, cfg.seed), cfg.seed)
        model = initial_model(cfg)
        strategy: DefenseStrategy | None = None
        sent: dict[str, ArrayRecord] = {}  # "global": the model the clients of the next round receive

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            trigger_seconds = 0.0
            if evaluator.rederives and server_round > 0 and cfg.attacks_in(server_round):  # as this round's attackers
                started = time.perf_counter()
                model.load_state_dict(sent["global"].to_torch_state_dict())
                evaluator.rederive_trigger(model, server_round)
                trigger_seconds = time.perf_counter() - started
            sent["global"] = arrays
            started = time.perf_counter()
            model.load_state_dict(arrays.to_torch_state_dict())
            result = evaluator(model)
            recorder.on_evaluation(server_round, result, time.perf_counter() - started, trigger_seconds)
            if server_round > 0 and strategy is not None:
                snapshot(server_round, arrays, strategy.state_dict(), cfg,
                         evaluator.trigger_memory).save(recorder.run_dir)
            # a MetricRecord holds numbers only: a metric that could not be computed is left out
            metrics: dict[str, Any] = {"diverged": int(result.diverged)}
            metrics |= {key: value for key, value in (("ma", result.ma), ("asr", result.asr), ("racc", result.racc))
                        if value is not None}
            if None not in result.per_class_acc:
                metrics["per-class-acc"] = result.per_class_acc
            return MetricRecord(metrics)

        defense_inputs: dict[str, Any] = {}
        if DEFENSES.get(cfg.defense).needs_server_data:
            from clipfed.data_synth.provider import (
                obtain_server_dataset,
                synth_config_for,
            )

            synth = synth_config_for(cfg)
            if cfg.teacher_guard != "off":  # audit (and maybe repair) the teacher before trusting it
                from clipfed.guard.policy import run_guard

                synth, recorder.payload["teacher_guard"] = run_guard(cfg, synth, recorder.run_dir / "teacher-guard")
                recorder.flush()
            server_data, cache_hit = obtain_server_dataset(synth, cfg.synth_url)
            recorder.note_server_data(server_data, cache_hit)
            defense_inputs["server_data"] = server_data
        strategy = create_defense(cfg, sampler=PartitionSampler(cfg), on_report=recorder.on_report,
                                  **defense_inputs)
        initial_arrays, first_round = ArrayRecord(model.state_dict()), 1
        if cfg.init_model and checkpoint is None:
            initial_arrays, recorder.payload["init_model"] = load_init_model(cfg, model.state_dict())
        if checkpoint is not None:
            strategy.load_state_dict(checkpoint.strategy_state)
            restore_rng_states(checkpoint.rng)
            evaluator.restore_trigger(checkpoint.trigger_memory)
            initial_arrays, first_round = checkpoint.array_record(), checkpoint.server_round + 1
        sent["global"] = initial_arrays
        strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate,
            first_round=first_round,
        )
    except KeyboardInterrupt:  # Ctrl-C, or a stop signal raised as ``Interrupted``: resumable, not failed
        recorder.finish(status="interrupted")
        raise
    except BaseException:
        recorder.finish(status="failed")
        raise
    recorder.finish()
    print(results_table([load_result(recorder.run_dir)]), flush=True)
    print(f"[clipfed] results: {recorder.path}", flush=True)
