"""Per-round checkpoints and resuming a run from one.

After every round the ServerApp writes ``<run folder>/checkpoint.pt`` atomically: the global
model, the strategy's own state (defense history such as FoolsGold's, CLIP-Fed's projector), the
global RNG states and the round number. ``resume-from=<run folder>`` starts a *new* run folder
(results are never overwritten) holding the old rounds, and continues at the next round, so the
final metrics equal those of an uninterrupted run with the same config.

It also holds the server's memory of a learned trigger (``BackdoorEvaluator.trigger_memory``: the
A3FL or F3BA trigger it re-derived, F3BA's last layer weights), so that a resumed run measures ASR
with the trigger the interrupted one had reached, and re-derives on from it, rather than from the
starting pattern.

Client-side state (an attacker's memory in ``context.state``: its learned trigger, the
``neurotoxin`` update part's and F3BA's previous global model) lives on the clients and is not in
the server's checkpoint: a resumed run's attackers start their memory afresh.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from clipfed.config import ConfigError, RunConfig

CHECKPOINT_FILE = "checkpoint.pt"
# Keys that may differ between a run and its resumption: where results go, how long to wait,
# how many rounds in all, and the resume pointer itself.
RESUMABLE_CHANGES = ("out-dir", "run-name", "resume-from", "round-timeout", "num-server-rounds")


def rng_states() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["random"])


@dataclass
class Checkpoint:
    """What the server needs to continue after ``server_round``."""

    server_round: int
    arrays: dict[str, torch.Tensor]
    strategy_state: dict[str, Any]
    rng: dict[str, Any]
    config_hash: str
    # the evaluator's re-derivation memory (name -> array); empty for a fixed trigger and in
    # checkpoints written before it was saved
    trigger_memory: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, run_dir: Path) -> Path:
        """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
        path = Path(run_dir) / CHECKPOINT_FILE
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({
            "server_round": self.server_round,
            "arrays": self.arrays,
            "strategy_state": self.strategy_state,
            "rng": self.rng,
            "config_hash": self.config_hash,
            "trigger_memory": self.trigger_memory,
        }, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, run_dir: Path, key: str = "resume-from") -> Checkpoint:
        """The checkpoint in a run folder; ``key`` is the config key that named the folder."""
        path = Path(run_dir) / CHECKPOINT_FILE
        if not path.is_file():
            raise ConfigError(f"invalid run config:\n  - {key}: {run_dir} holds no {CHECKPOINT_FILE}; "
                              "allowed: the folder of a run that finished at least one round")
        # Our own file (RNG states hold numpy/python objects), so not weights_only.
        payload = torch.load(path, map_location="cpu", weights_only=False)
        return cls(**payload)

    def array_record(self) -> ArrayRecord:
        return ArrayRecord(self.arrays)


def snapshot(server_round: int, arrays: ArrayRecord, strategy_state: dict[str, Any],
             cfg: RunConfig, trigger_memory: dict[str, np.ndarray] | None = None) -> Checkpoint:
    """The checkpoint after ``server_round``; ``trigger_memory`` (the evaluator's, None: none) is
    copied, as the evaluator goes on writing to its own."""
    return Checkpoint(server_round, arrays.to_torch_state_dict(), strategy_state, rng_states(),
                      cfg.config_hash(), {k: v.copy() for k, v in (trigger_memory or {}).items()})


def check_resumable(cfg: RunConfig, old_config: dict[str, Any], checkpoint: Checkpoint) -> None:
    """Refuse to resume under a config that would not reproduce the interrupted run."""
    new = cfg.to_flower()
    changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old_config.get(k) != new[k])
    if changed:
        listed = ", ".join(f"{k} ({old_config.get(k)!r} -> {new[k]!r})" for k in changed)
        raise ConfigError(
            f"invalid run config:\n  - resume-from: the run in {cfg.resume_from} used other values for "
            f"{listed}; allowed: the same config except {', '.join(RESUMABLE_CHANGES)}"
        )
    if checkpoint.server_round >= cfg.num_server_rounds:
        raise ConfigError(
            f"invalid run config:\n  - num-server-rounds: {cfg.num_server_rounds}, but the run in "
            f"{cfg.resume_from} already finished round {checkpoint.server_round}; allowed: "
            f"{checkpoint.server_round + 1} or more"
        )


def load_resume(cfg: RunConfig) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint and the result (rounds up to the checkpoint's) of ``cfg.resume_from``."""
    from clipfed.runs.results import RESULT_FILE, load_result

    run_dir = Path(cfg.resume_from).expanduser()
    if not (run_dir / RESULT_FILE).is_file():
        raise ConfigError(f"invalid run config:\n  - resume-from: {run_dir} holds no {RESULT_FILE}; "
                          "allowed: the folder of an earlier run")
    checkpoint = Checkpoint.load(run_dir)
    previous = load_result(run_dir)
    check_resumable(cfg, previous["config"], checkpoint)
    previous["rounds"] = [r for r in previous["rounds"] if r["round"] <= checkpoint.server_round]
    return checkpoint, previous


def load_init_model(cfg: RunConfig, model_keys: dict[str, torch.Tensor]) -> tuple[ArrayRecord, dict[str, Any]]:
    """``init-model``: the global model of another run's checkpoint (a warm start: e.g. clean
    FedAvg pre-training, so that a short attack run starts from a useful model)."""
    checkpoint = Checkpoint.load(Path(cfg.init_model).expanduser(), key="init-model")
    if {k: tuple(v.shape) for k, v in checkpoint.arrays.items()} != {k: tuple(v.shape) for k, v in model_keys.items()}:
        raise ConfigError(f"invalid run config:\n  - init-model: {cfg.init_model} holds another architecture "
                          f"than model={cfg.model!r}; allowed: a run folder of the same model")
    origin = {"path": str(cfg.init_model), "after_round": checkpoint.server_round,
              "config_hash": checkpoint.config_hash}
    return checkpoint.array_record(), origin
