"""Benchmark suites: which data settings, defenses, attacks and seeds, and how each run is sized.

Every grid starts from a warm model: per data setting and seed, clean FedAvg (no attacker) is
trained for ``pretrain_rounds`` once, and each cell starts from its checkpoint (``init-model``),
as the field evaluates backdoor defenses on a model that already learned the task. Each setting
carries the control rows METHOD.md requires: FedAvg without attack, FedAvg under attack (a grid
cell) and the teacher alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONTROL_DEFENSES = ("fedavg-no-attack", "teacher-only")


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    base: dict[str, Any]  # run-config keys shared by every run
    settings: dict[str, dict[str, Any]]  # data setting name -> its run-config keys
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]
    seeds: tuple[int, ...]
    pretrain_rounds: int
    pretrain_keys: dict[str, Any] = field(default_factory=dict)  # how the warm start trains, if not as `base`
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra rows: name -> keys


_CPU_BASE: dict[str, Any] = {
    "model": "cnn", "num-clients": 20, "num-malicious": 4, "fraction-train": 0.5, "batch-size": 64,
    "lr": 0.02, "attack-start-round": 1,
}
_DIRICHLET = {"dataset": "cifar10", "partition": "dirichlet", "dirichlet-alpha": 0.5}
_LONG_TAIL = {"dataset": "cifar10-lt", "partition": "dirichlet", "dirichlet-alpha": 0.5, "imbalance-factor": 0.01}
_ALL_CLASSIC = ("fedavg", "krum", "multikrum", "median", "trimmedmean", "bulyan", "flame", "fltrust",
                "foolsgold", "rlr", "normclip", "weakdp", "crfl")
# Sized for 2 CPU cores: short attacked phases of few local steps from a warm start, attackers
# training longer than benign clients (as in Bagdasaryan et al. and DBA; with 5 steps each,
# FedAvg's ASR stayed under 0.35 in 6 rounds, with 20 it reached 0.68 in 3 and 0.95 in 4), and MA/ASR on a
# fixed class-balanced test subset (eval-samples), as evaluation would otherwise cost as much as
# training.
_STANDARD_BASE = {**_CPU_BASE, "num-server-rounds": 3, "local-steps": 5, "attack-local-steps": 20,
                  "eval-samples": 500}
_STANDARD_PRETRAIN_ROUNDS = 40
_STANDARD_PRETRAIN_KEYS = {"local-steps": 20, "attack-local-steps": 0, "eval-samples": 1000}

# The `paper` suite: the field's setting on one GPU. ResNet-18, 100 clients of which 10 train per
# round (fraction-train 0.1), Dirichlet 0.5, 2 local epochs at batch 64 with the standard crop+flip
# augmentation, on `device=auto`. 10 attackers among 100 clients put about one in each round's 10,
# so the Krum family assumes f = 1 (krum-f), which also lets Bulyan (n >= 4f + 3 = 7) aggregate.
_PAPER_BASE: dict[str, Any] = {
    "model": "resnet18", "num-clients": 100, "num-malicious": 10, "fraction-train": 0.1, "local-epochs": 2,
    "batch-size": 64, "lr": 0.02, "augment": True, "device": "auto", "attack-start-round": 1, "krum-f": 1,
}
PAPER_PRETRAIN_ROUNDS = 200  # clean FedAvg warm start: 1.8M images, 36 passes' worth of the clients' data
PAPER_ATTACK_ROUNDS = 20  # attacked rounds of every grid cell
# Seconds per round of the paper setting on one H100-class GPU, run by run (--workers 1): an
# estimate, to be replaced by a measurement (`clipfed bench-device --models resnet18 --devices cuda`
# gives the rates). Its parts:
_PAPER_TRAIN_IMAGES = 10 * 2 * 450  # 10 clients x 2 epochs x the mean shard (90% of 50,000 over 100 clients)
_PAPER_TRAIN_RATE = 5_000  # ResNet-18 training images/s at batch 64, fp32, one client at a time
_PAPER_EVAL_IMAGES = 10_000 + 9_000  # MA on the whole test set, ASR on its triggered non-target images
_PAPER_EVAL_RATE = 20_000  # ResNet-18 inference images/s at batch 1000
_PAPER_SERVER_SECONDS = 3.0  # the costliest defense, CLIP-Fed: 11 models over its 1,500-image probe, 60 steps
_PAPER_FIXED_SECONDS = 1.0  # ten 45 MB replies through host memory, records, a checkpoint
PAPER_ROUND_SECONDS = (_PAPER_TRAIN_IMAGES / _PAPER_TRAIN_RATE + _PAPER_EVAL_IMAGES / _PAPER_EVAL_RATE
                       + _PAPER_SERVER_SECONDS + _PAPER_FIXED_SECONDS)  # 6.75 s
_PAPER_SEEDS = (0, 1, 2)
_PAPER_ATTACKS = ("badnets", "blended", "dba", "frequency")
_PAPER_ROWS = len(_ALL_CLASSIC) + 1 + len(CONTROL_DEFENSES)  # the defenses, CLIP-Fed, the controls
PAPER_GPU_HOURS = (PAPER_PRETRAIN_ROUNDS + len(_PAPER_SEEDS) * len(_PAPER_ATTACKS) * _PAPER_ROWS
                   * PAPER_ATTACK_ROUNDS) * PAPER_ROUND_SECONDS / 3600  # 7.6: 4,040 rounds

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            name="quick",
            description="smoke test, under 10 minutes on 2 cores: one setting, BadNets, 3 defenses",
            base={**_CPU_BASE, "num-clients": 10, "num-malicious": 2, "num-server-rounds": 3},
            settings={"cifar10-dir0.5": _DIRICHLET},
            defenses=("fedavg", "flame", "clipfed"),
            attacks=("badnets",),
            seeds=(0,),
            pretrain_rounds=2,
        ),
        Suite(
            name="standard",
            description="CIFAR-10 Dirichlet 0.5 and CIFAR-10-LT; 4 backdoors; every defense; 3 seeds; "
                        "3 attacked rounds of 5 local steps (20 for attackers) after one 40-round warm start "
                        "per setting, MA/ASR on a fixed class-balanced 500-image test subset (about 1.5 "
                        "hours with --workers 2 on 2 cores)",
            base=_STANDARD_BASE,
            settings={"cifar10-dir0.5": _DIRICHLET, "cifar10lt-dir0.5": _LONG_TAIL},
            defenses=(*_ALL_CLASSIC, "clipfed"),
            attacks=("badnets", "blended", "dba", "frequency"),
            seeds=(0, 1, 2),
            pretrain_rounds=_STANDARD_PRETRAIN_ROUNDS,
            pretrain_keys=_STANDARD_PRETRAIN_KEYS,
        ),
        Suite(
            name="paper",
            description=f"for one GPU, about {PAPER_GPU_HOURS:.0f} GPU-hours run by run: ResNet-18, 100 clients, "
                        "10 a round, CIFAR-10 Dirichlet 0.5, 2 local epochs at batch 64 with crop+flip "
                        "augmentation; 4 backdoors (10 attackers), every defense, 3 seeds; "
                        f"{PAPER_ATTACK_ROUNDS} attacked rounds after a {PAPER_PRETRAIN_ROUNDS}-round warm start "
                        f"(estimated {PAPER_ROUND_SECONDS:.2f} s a round on an H100-class GPU: "
                        "clipfed/bench/suites.py says from what)",
            base={**_PAPER_BASE, "num-server-rounds": PAPER_ATTACK_ROUNDS},
            settings={"cifar10-dir0.5": _DIRICHLET},
            defenses=(*_ALL_CLASSIC, "clipfed"),
            attacks=_PAPER_ATTACKS,
            seeds=_PAPER_SEEDS,
            pretrain_rounds=PAPER_PRETRAIN_ROUNDS,
        ),
        Suite(
            name="ablation",
            description="CLIP-Fed's parts (pre/post only, without the prototype loss, KL, augmentation) "
                        "on CIFAR-10 Dirichlet 0.5 and 0.1 and CIFAR-10-LT; BadNets and Blended; 3 seeds; "
                        "sized as `standard`",
            base=_STANDARD_BASE,
            settings={"cifar10-dir0.5": _DIRICHLET, "cifar10-dir0.1": {**_DIRICHLET, "dirichlet-alpha": 0.1},
                      "cifar10lt-dir0.5": _LONG_TAIL},
            defenses=("fedavg", "clipfed"),
            attacks=("badnets", "blended"),
            seeds=(0, 1, 2),
            pretrain_rounds=_STANDARD_PRETRAIN_ROUNDS,
            pretrain_keys=_STANDARD_PRETRAIN_KEYS,
            variants={
                "clipfed-pre-only": {"defense": "clipfed", "clipfed-post": False},
                "clipfed-post-only": {"defense": "clipfed", "clipfed-pre": False},
                "clipfed-no-proto-loss": {"defense": "clipfed", "clipfed-lambda-pc": 0.0},
                "clipfed-no-kl": {"defense": "clipfed", "clipfed-lambda-kl": 0.0},
                "clipfed-no-freq-aug": {"defense": "clipfed", "clipfed-augmented": False},
            },
        ),
    )
}


def list_suites() -> list[str]:
    return list(SUITES)
