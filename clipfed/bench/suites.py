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
            description="ResNet-18, 100 clients, 10% per round, 50 rounds; for a GPU",
            base={**_CPU_BASE, "model": "resnet18", "num-clients": 100, "num-malicious": 10,
                  "fraction-train": 0.1, "local-epochs": 2, "num-server-rounds": 50},
            settings={"cifar10-dir0.5": _DIRICHLET, "cifar10lt-dir0.5": _LONG_TAIL,
                      "cifar10-dir0.1": {**_DIRICHLET, "dirichlet-alpha": 0.1}},
            defenses=(*_ALL_CLASSIC, "clipfed"),
            attacks=("badnets", "blended", "dba", "frequency"),
            seeds=(0, 1, 2),
            pretrain_rounds=100,
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
