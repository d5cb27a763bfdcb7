"""Benchmark suites: which data settings, defenses, attacks and seeds, and how each run is sized.

Every grid starts from a warm model: per data setting (and seed, for ``pretrain_per_seed``), clean
FedAvg (no attacker) is trained for ``pretrain_rounds`` (or to a ``Plateau``) once, and each cell
starts from its checkpoint (``init-model``), as the field evaluates backdoor defenses on a model
that already learned the task. Each setting carries the control rows METHOD.md requires: FedAvg
without attack, FedAvg under attack (a grid cell) and the teacher alone.

The ``durable`` suites follow the protocol of BackFed (thinh-dao/BackFed): 100 clients of which 10
train per round, 10 fixed attackers that act only when sampled, an attack ``Window`` of W rounds
then D clean rounds to see how long the backdoor lasts, the full test set, and a single-shot
column (5 attackers in one round, model replacement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean
from typing import Any

from clipfed.attacks.registry import resolve_parts
from clipfed.checks import LEARNED_TRIGGERS
from clipfed.config import RunConfig

CONTROL_DEFENSES = ("fedavg-no-attack", "teacher-only")


@dataclass(frozen=True)
class Plateau:
    """How a warm start is trained "to a plateau" rather than for a guessed number of rounds: from
    the suite's ``pretrain_rounds`` on in chunks of ``chunk`` rounds, until the mean MA of the last
    ``window`` rounds is less than ``min_gain`` above that of the ``window`` rounds before (MA has
    stopped rising beyond its round-to-round noise), or ``max_rounds`` (the report then says the
    cap ended it)."""

    chunk: int
    window: int
    min_gain: float
    max_rounds: int

    def gain(self, mas: list[float | None]) -> float | None:
        """The last ``window`` rounds' mean MA minus the ``window`` before's (``mas``: rounds 1..N;
        a diverged round's None is left out); None while there are fewer than two windows."""
        last = [m for m in mas[-self.window:] if m is not None]
        before = [m for m in mas[-2 * self.window:-self.window] if m is not None]
        if len(mas) < 2 * self.window or not last or not before:
            return None
        return mean(last) - mean(before)

    def next_rounds(self, mas: list[float | None]) -> int | None:
        """How many rounds the warm start should have in all, or None when it has plateaued or
        reached ``max_rounds``."""
        gain = self.gain(mas)
        if (gain is not None and gain < self.min_gain) or len(mas) >= self.max_rounds:
            return None
        return min(len(mas) + self.chunk, self.max_rounds)


@dataclass(frozen=True)
class Window:
    """The durable protocol after the warm start: attackers act in rounds 1..``attack_rounds`` (W),
    each only in the rounds that sample it, then ``clean_rounds`` (D) rounds without attack."""

    attack_rounds: int
    clean_rounds: int

    @property
    def rounds(self) -> int:
        """W + D: the rounds of a run after its warm start."""
        return self.attack_rounds + self.clean_rounds

    def keys(self, first: int = 1, last: int = 0) -> dict[str, Any]:
        """The run-config keys of an attack in rounds ``first``..``last`` (default: the window)."""
        last = last or first + self.attack_rounds - 1
        return {"attack-start-round": first, "attack-end-round": last, "num-server-rounds": last + self.clean_rounds}


@dataclass(frozen=True)
class AttackVariant:
    """An attack column with keys of its own (``attack`` among them). ``single_shot`` > 0: the
    attack acts in one round only, the first of the window in which exactly that many of the
    sampled clients are attackers (sampling is seeded, so the round is known in advance)."""

    keys: dict[str, Any]
    single_shot: int = 0


# Run-config keys that change only what attackers do (who, how many, how they train and scale),
# never the trigger a test image is stamped with (patch, blend, frequency, DBA and target keys do).
ATTACKER_ONLY_KEYS = frozenset({
    "attack", "attack-data", "attack-training", "attack-update", "num-malicious", "poison-rate",
    "attack-local-steps", "attack-epochs", "attack-lr", "pgd-eps", "pgd-every", "boost-factor",
    "neurotoxin-keep", "constrain-alpha", "aware-lambda"})


def control_of(column: str, keys: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The attack name and keys of a column's control runs: FedAvg without attack and teacher only.

    With no attacker (or, for teacher only, no client trained) an attack only decides the trigger
    ASR is measured with. A fixed trigger is its data part's (``attack-data`` or the shorthand's;
    every data part is a shorthand of its own) with the column's trigger keys, so the columns that
    stamp the same one with default keys (BadNets' patch: badnets, pgd, constrain-scale,
    clipfed-aware) share one control run, named by that part. A column with trigger keys of its
    own (any key not in ``ATTACKER_ONLY_KEYS``: a bigger patch, another target) keeps its name with
    the part and those keys; a learned trigger (``checks.LEARNED_TRIGGERS``: the server re-derives
    it with the column's keys) and a column with its own window (single-shot) keep the column's
    name and keys.

    Args:
        column: The attack column (a shorthand or a suite's attack variant).
        keys: The column's own run-config keys (its variant's and window's).

    Returns:
        (the name the controls' run folders carry, their attack keys).
    """
    attack = str(keys.get("attack", column))
    data = resolve_parts(attack, str(keys.get("attack-data", "")))[0]
    if data in LEARNED_TRIGGERS or any(k in keys for k in ("attack-start-round", "attack-end-round")):
        return column, keys
    trigger = {k: v for k, v in keys.items() if k not in ATTACKER_ONLY_KEYS}
    return (column if trigger else data), {"attack": data, **trigger}


def shared_control_columns(attacks: tuple[str, ...], variants: dict[str, AttackVariant]) -> int:
    """How many of ``attacks``' columns reuse another column's control runs (``control_of``; a
    single-shot column has a window of its own, so never)."""
    labels = [a if (v := variants.get(a)) is not None and v.single_shot
              else control_of(a, dict(v.keys) if v is not None else {})[0] for a in attacks]
    return len(labels) - len(set(labels))


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    base: dict[str, Any]  # run-config keys shared by every run
    settings: dict[str, dict[str, Any]]  # data setting name -> its run-config keys
    defenses: tuple[str, ...]
    attacks: tuple[str, ...]  # attack names, or names of `attack_variants`
    seeds: tuple[int, ...]
    pretrain_rounds: int  # the warm start's rounds (with a `plateau`: its first chunk)
    pretrain_keys: dict[str, Any] = field(default_factory=dict)  # how the warm start trains, if not as `base`
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # extra rows: name -> keys
    pretrain_per_seed: bool = False  # one warm start per setting and seed (else per setting, seed `seeds[0]`)
    plateau: Plateau | None = None  # train the warm start on until it plateaus
    window: Window | None = None  # an attack window then clean rounds (the durable protocol)
    attack_variants: dict[str, AttackVariant] = field(default_factory=dict)
    # attackers' budgets by name (first: the default); `attack-epochs` is for the base's local epochs
    # and scales with a setting's own (``Suite.budget_for``)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The user's `clipfed bench -c` keys (e.g. their own teacher), set on every cell that reads them
    # (``Cell.config``); never a key the grid sets per cell (``grid_keys``)
    overrides: dict[str, Any] = field(default_factory=dict)

    def budget_for(self, keys: dict[str, Any], setting: str) -> dict[str, Any]:
        """A budget's keys in ``setting``: a setting that trains k times the base's local epochs
        gives its attackers k times the budget's ``attack-epochs``, so that BackFed's 3x stays 3x."""
        base = self.base.get("local-epochs", 1)
        epochs = self.settings[setting].get("local-epochs", base)
        if "attack-epochs" not in keys or epochs == base:
            return keys
        scaled = keys["attack-epochs"] * epochs / base
        if scaled != int(scaled):
            raise ValueError(f"suite {self.name!r}: setting {setting!r}'s local-epochs {epochs} do not scale "
                             f"attack-epochs {keys['attack-epochs']} (base {base}) to whole epochs")
        return {**keys, "attack-epochs": int(scaled)}


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
_PAPER_EVAL_RATE = 20_000  # ResNet-18 inference images/s at batch 1000 (an estimate; evaluation now passes 256)
_PAPER_SERVER_SECONDS = 3.0  # the costliest defense, CLIP-Fed: 11 models over its 1,500-image probe, 60 steps
_PAPER_FIXED_SECONDS = 1.0  # ten 45 MB replies through host memory, records, a checkpoint
PAPER_ROUND_SECONDS = (_PAPER_TRAIN_IMAGES / _PAPER_TRAIN_RATE + _PAPER_EVAL_IMAGES / _PAPER_EVAL_RATE
                       + _PAPER_SERVER_SECONDS + _PAPER_FIXED_SECONDS)  # 6.75 s
_PAPER_SEEDS = (0, 1, 2)
_PAPER_ATTACKS = ("badnets", "blended", "dba", "frequency")
_PAPER_ROWS = len(_ALL_CLASSIC) + 1 + len(CONTROL_DEFENSES)  # the defenses, CLIP-Fed, the controls
PAPER_GPU_HOURS = (PAPER_PRETRAIN_ROUNDS + len(_PAPER_SEEDS) * len(_PAPER_ATTACKS) * _PAPER_ROWS
                   * PAPER_ATTACK_ROUNDS) * PAPER_ROUND_SECONDS / 3600  # 7.6: 4,040 rounds

# The `durable` suites (issue 19): BackFed's protocol. 100 clients, 10 a round, 10 fixed attackers
# acting only when sampled (about one a round), the whole test set, krum-f 1 as in `paper`. Rows:
# the controls, FedAvg under attack and the five defenses the field compares CLIP-Fed with.
DURABLE_DEFENSES = ("fedavg", "clipfed", "flame", "multikrum", "fltrust", "median")
# Every CLIP-Fed row with both strengths of the offline stand-in teacher (issue 20): the weak one
# (trained on the public pool, 0.618 on CIFAR-10, below a converged federated model) and the strong
# one (trained on the clean train split, `teacher-pool`; it has seen images like the clients', which a
# real CLIP has not), each with its teacher-only control.
STRONG_TEACHER_VARIANTS: dict[str, dict[str, Any]] = {
    "clipfed-strong-teacher": {"defense": "clipfed", "teacher-pool": "train-split"},
    "teacher-only-strong-teacher": {"defense": "teacher-only", "teacher-pool": "train-split"},
}
# The CPU suite's own ablation rows (issues 18 and 20), against the `clipfed` row:
# - clipfed-lean: CLIP-Fed's server step cut to the size that keeps it within 20% of a `make demo`
#   round on 2 cores (20 distillation steps instead of 60, a probe of 250 clean images instead of
#   500: 2.1-2.3 s instead of 5.3-5.8 s), to measure what the smaller step costs over the window;
# - clipfed-history: each client's running score over the rounds it was sampled in
#   (`clipfed-history-weight` 0.5) read at threshold 2.5, the setting that replaying the `clipfed`
#   BadNets run's recorded scores chose (`clipfed bench-replay`, docs/results.md), to measure it
#   where it decides the exclusions (and so the rounds that follow).
# - clipfed-two-sided: clipfed-history plus the low side on `proto` at 2.0, the setting that replaying
#   the pgd and clipfed-aware runs chose (their attackers' proto shift is the round's lowest).
# - clipfed-better-of: each server image distilled towards the teacher or the round's aggregate,
#   whichever knows its label better (`clipfed-kd-target`), to measure whether the federation then
#   keeps what it learns beyond a weak teacher over 50 rounds, and what that costs in ASR.
DURABLE_CPU_ABLATION: dict[str, dict[str, Any]] = {
    "clipfed-lean": {"defense": "clipfed", "clipfed-post-steps": 20, "clipfed-probe-size": 250},
    "clipfed-history": {"defense": "clipfed", "clipfed-history-weight": 0.5, "clipfed-z-threshold": 2.5},
    "clipfed-two-sided": {"defense": "clipfed", "clipfed-history-weight": 0.5, "clipfed-z-threshold": 2.5,
                          "clipfed-low-signals": "proto", "clipfed-low-threshold": 2.0},
    "clipfed-better-of": {"defense": "clipfed", "clipfed-kd-target": "better-of"},
}
# The plan refuses, naming them, any attack that is not registered. `_durable_variants` gives the
# columns with keys of their own (pgd, a3fl, single-shot).
DURABLE_ATTACKS = ("badnets", "pgd", "constrain-scale", "a3fl", "f3ba", "clipfed-aware", "single-shot")
_DURABLE_COMMON: dict[str, Any] = {"num-clients": 100, "num-malicious": 10, "fraction-train": 0.1, "krum-f": 1,
                                   "eval-samples": 0, "batch-size": 64, "lr": 0.02}
# The warm start's MA is read on a fixed 2,000-image subset (1.1 points of noise per round, 0.25 on
# a 20-round mean): cheaper than the whole test set, and a plateau is a trend, not a final number.
_DURABLE_PRETRAIN_KEYS = {"eval-samples": 2000}
_SHARD = 450  # the mean client shard: 90% of CIFAR-10's 50,000 training images over 100 clients
_SHARD_LT = 112  # CIFAR-10-LT (imbalance 0.01) of the 45,000 left after the public pool: 11,165 over 100 clients
# The durable CIFAR-10-LT setting trains 4 local epochs (attackers 12: budgets scale with a setting's
# epochs), so that a client sees about the 450 images a round of the CIFAR-10 setting: at 1 epoch
# (2 SGD steps on 112 images) a 140-round warm start reached only MA 0.10-0.21, and the plateau
# rule stopped it there on noise.
_DURABLE_LT_EPOCHS = 4
# Its backdoor target is the rarest class (9, truck: 50 of CIFAR-10-LT's training images at
# imbalance 0.01), not the head class 0 of the other settings: a model trained on LT leans towards
# its head classes, so with target 0 FedAvg without attack already sent 0.21 of triggered images
# to the target (ASR's clean floor, 2026-12-01 runs) and 5 points above that floor hid a backdoor
# that lands on the head class anyway; a tail target's floor is what a backdoor adds.
_DURABLE_LT_TARGET = 9
_DURABLE_LONG_TAIL = _LONG_TAIL | {"local-epochs": _DURABLE_LT_EPOCHS, "target-label": _DURABLE_LT_TARGET}
_ATTACKERS_PER_ROUND = 10 * 0.1  # 10 attackers of 100 clients, 10 sampled a round: 1 expected

# A3FL departs from its official defaults (200 outer epochs, a fresh adversarial copy every pass:
# clipfed/attacks/data/a3fl.py) in the durable suites. One search then costs `a3fl_passes` = 1,394
# passes over a shard, made by each sampled attacker and again by the server's re-derivation of the
# trigger (every window round, every row): about 35 hours on 2 CPU cores and 52 GPU-hours for the
# a3fl column alone. 20 outer epochs and a copy every 5th pass are 50 passes a search; the trigger
# is kept from one attacked round to the next (a3fl's node memory), so it goes on learning.
A3FL_DURABLE_KEYS: dict[str, Any] = {"a3fl-outer-epochs": 20, "a3fl-adv-every": 5}
# `pgd-eps` is an absolute L2 radius; the official 2 is about 6x a benign update of the durable CNN
# (about 0.33, a 3x-budget attacker's about 3.5), so a norm check would not see PGD project at
# all. The durable suites set it near the benign norm, where PGD's point, hiding from a norm
# check, is tested: 0.5 for the CNN; for ResNet-18 (2 local epochs, twice the CNN's steps at the
# same lr and momentum) an estimate of 1.0, not measured: replace it with the median update norm
# that FLAME records each round (`bound`) in the first GPU run's result.json.
PGD_EPS_CNN, PGD_EPS_RESNET18 = 0.5, 1.0


def a3fl_passes(keys: dict[str, Any]) -> int:
    """Model passes over its shard that one A3FL trigger search makes (``A3FL.search``) with
    ``keys`` over the run config's defaults: each outer epoch one through the global model, from
    epoch ``a3fl-adv-every`` on one more through the adversarial copy, and ``a3fl-adv-epochs`` of
    training for each fresh copy (epochs adv-every, 2 adv-every, ... below the outer epochs)."""
    cfg = RunConfig.from_flower(keys)
    copies = (cfg.a3fl_outer_epochs - 1) // cfg.a3fl_adv_every if cfg.a3fl_adv_weight > 0 else 0
    with_copy = max(cfg.a3fl_outer_epochs - cfg.a3fl_adv_every, 0) if copies else 0
    return cfg.a3fl_outer_epochs + with_copy + copies * cfg.a3fl_adv_epochs


def _durable_variants(pgd_eps: float) -> dict[str, AttackVariant]:
    """The durable suites' per-attack keys: PGD's radius near a benign update, A3FL's CPU-feasible
    search, and `single-shot`, BadNets with model replacement in one round in which 5 of the 10
    sampled clients attack: with 50 of the 100 clients able to attack (each benign in every other
    round), about one round in four samples exactly 5 of them, so that round comes early."""
    return {"pgd": AttackVariant({"attack": "pgd", "pgd-eps": pgd_eps}),
            "a3fl": AttackVariant({"attack": "a3fl", **A3FL_DURABLE_KEYS}),
            "single-shot": AttackVariant({"attack": "badnets", "attack-update": "scaling", "num-malicious": 50},
                                         single_shot=5)}


def _hours(rounds: int, train_images: float, train_rate: float, eval_rate: float, server_seconds: float) -> float:
    """Estimated hours of ``rounds`` rounds run by run: training, evaluation of the whole test set
    (10,000 clean and 9,000 triggered images), the server's step (mean over the rows) and 1 s of
    records a round."""
    return rounds * (train_images / train_rate + 19_000 / eval_rate + server_seconds + 1.0) / 3600


def _a3fl_hours(window: Window, rows: int, train_rate: float, keys: dict[str, Any] = A3FL_DURABLE_KEYS,
                shard: int = _SHARD) -> float:
    """Estimated hours of the a3fl column's trigger searches on top of its rounds: in each window
    round of each row, the server's re-derivation and (but in FedAvg without attack) the expected
    sampled attacker's own, each `a3fl_passes` over a shard at the training rate."""
    searches = window.attack_rounds * (rows + (rows - 1) * _ATTACKERS_PER_ROUND)
    return searches * a3fl_passes(keys) * shard / train_rate / 3600


# CPU (2 cores): the CNN, 1 benign local epoch (about 450 images a shard); W = 20 attacked rounds,
# D = 30 clean ones (so that ASR at +25 is read). BackFed's attacker budget: 3x the benign epochs
# at lr 0.05. Rates measured on this 2-core CPU (docs/bench-clipfed: 22,500 training images in
# about 15 s, 19,000 evaluated in about 5 s); A3FL's searches at the training rate.
DURABLE_CPU_WINDOW = Window(attack_rounds=20, clean_rounds=30)
# Rows of a column: the defenses, the controls, the strong-teacher rows and, on the CPU only, the
# ablation rows.
_DURABLE_GPU_ROWS = len(DURABLE_DEFENSES) + len(CONTROL_DEFENSES) + len(STRONG_TEACHER_VARIANTS)
_DURABLE_CPU_ROWS = _DURABLE_GPU_ROWS + len(DURABLE_CPU_ABLATION)


def _durable_runs(rows: int) -> int:
    """The runs of a seed: every row of every column, less the control runs (FedAvg without attack
    and both teacher-only rows) of the columns that share BadNets' patch with another (`control_of`)."""
    return (rows * len(DURABLE_ATTACKS)
            - shared_control_columns(DURABLE_ATTACKS, _durable_variants(PGD_EPS_CNN))
            * (len(CONTROL_DEFENSES) + sum(v["defense"] == "teacher-only" for v in STRONG_TEACHER_VARIANTS.values())))


def _durable_cpu_hours(shard: int, epochs: int) -> float:
    """One setting's estimate: 9 benign clients' ``epochs`` over a shard and one attacker's 3x a
    round; A3FL's searches pass over the shard itself."""
    return (_hours(_durable_runs(_DURABLE_CPU_ROWS) * DURABLE_CPU_WINDOW.rounds, (9 + 3) * epochs * shard,
                   1_500, 3_800, 2.5)
            + _a3fl_hours(DURABLE_CPU_WINDOW, _DURABLE_CPU_ROWS, 1_500, shard=shard))


DURABLE_CPU_HOURS = _durable_cpu_hours(_SHARD, 1)  # CIFAR-10 Dirichlet 0.5
DURABLE_CPU_LT_HOURS = _durable_cpu_hours(_SHARD_LT, _DURABLE_LT_EPOCHS)  # CIFAR-10-LT
# GPU (one H100-class): `paper`'s ResNet-18 setting (2 local epochs at batch 64, crop+flip); W = D =
# 100; BackFed's attackers train 6 epochs at lr 0.05. Rates as `paper`'s estimate (not measured).
DURABLE_GPU_WINDOW = Window(attack_rounds=100, clean_rounds=100)
DURABLE_GPU_HOURS = (_hours(_durable_runs(_DURABLE_GPU_ROWS) * DURABLE_GPU_WINDOW.rounds,
                            9 * 2 * _SHARD + 6 * _SHARD, _PAPER_TRAIN_RATE, _PAPER_EVAL_RATE, _PAPER_SERVER_SECONDS)
                     + _a3fl_hours(DURABLE_GPU_WINDOW, _DURABLE_GPU_ROWS, _PAPER_TRAIN_RATE))


def _a3fl_note(window: Window, rows: int, train_rate: float, unit: str) -> str:
    official, ours = (_a3fl_hours(window, rows, train_rate, k) for k in ({}, A3FL_DURABLE_KEYS))
    return (f"a3fl with a3fl-outer-epochs {A3FL_DURABLE_KEYS['a3fl-outer-epochs']} and a3fl-adv-every "
            f"{A3FL_DURABLE_KEYS['a3fl-adv-every']}, a departure from its official defaults (200 and 1), whose "
            f"trigger search of {a3fl_passes({})} passes over a shard instead of {a3fl_passes(A3FL_DURABLE_KEYS)}, "
            "made by each sampled attacker and again by the server's re-derivation every window round, would "
            f"take about {official:.0f} {unit} on CIFAR-10 (these: {ours:.1f})")


def _pgd_note(eps: float, benign: str) -> str:
    return (f"pgd with pgd-eps {eps:g}, near a benign update's L2 norm ({benign}): the official 2 is an absolute "
            "radius that leaves PGD's update far above a benign one, hiding nothing from a norm check")


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
        Suite(
            name="durable",
            description=f"the durable protocol, CPU size (2 cores): CNN, 100 clients, 10 a round, 10 attackers "
                        f"acting when sampled, CIFAR-10 Dirichlet 0.5 and CIFAR-10-LT (imbalance 0.01, Dirichlet "
                        f"0.5, {_DURABLE_LT_EPOCHS} local epochs over its smaller shards, backdoor target its "
                        f"rarest class {_DURABLE_LT_TARGET}), whole test set; attack "
                        f"window W={DURABLE_CPU_WINDOW.attack_rounds} then D={DURABLE_CPU_WINDOW.clean_rounds} clean "
                        "rounds after a warm start trained to a plateau per seed (MA gain < 1 point between "
                        "20-round means, 60 to 300 rounds); attackers' budget --budget backfed-3x (3 local epochs "
                        "at lr 0.05; benign: 1 at 0.02) or equal; single-shot: 5 attackers in one round, model "
                        f"replacement; {_pgd_note(PGD_EPS_CNN, 'about 0.33 on this CNN; 2 is 6x it')}; "
                        f"{_a3fl_note(DURABLE_CPU_WINDOW, _DURABLE_CPU_ROWS, 1_500, 'hours')}; "
                        "CLIP-Fed and teacher only with "
                        "both reference teachers (public pool, and clean train split: the -strong-teacher rows); "
                        "clipfed-lean: CLIP-Fed with 20 distillation steps and a 250-image probe; clipfed-history: "
                        "running scores over a client's rounds (weight 0.5) at threshold 2.5; clipfed-two-sided: "
                        "that and low proto shifts at 2.0; clipfed-better-of: each server image distilled towards "
                        "the teacher or the round's aggregate, whichever knows its label better; "
                        "seed 0; about "
                        f"{DURABLE_CPU_HOURS:.0f} hours of rounds and A3FL trigger searches run by run on CIFAR-10 "
                        f"and {DURABLE_CPU_LT_HOURS:.0f} on CIFAR-10-LT (estimated)",
            base=_DURABLE_COMMON | {"model": "cnn", "local-epochs": 1},
            settings={"cifar10-dir0.5": _DIRICHLET, "cifar10lt-dir0.5": _DURABLE_LONG_TAIL},
            defenses=DURABLE_DEFENSES,
            attacks=DURABLE_ATTACKS,
            seeds=(0,),
            pretrain_rounds=60,
            pretrain_keys=_DURABLE_PRETRAIN_KEYS,
            pretrain_per_seed=True,
            plateau=Plateau(chunk=20, window=20, min_gain=0.01, max_rounds=300),
            variants=STRONG_TEACHER_VARIANTS | DURABLE_CPU_ABLATION,
            window=DURABLE_CPU_WINDOW,
            attack_variants=_durable_variants(PGD_EPS_CNN),
            budgets={"backfed-3x": {"attack-epochs": 3, "attack-lr": 0.05}, "equal": {}},
        ),
        Suite(
            name="durable-gpu",
            description=f"the durable protocol, GPU size (one GPU): ResNet-18 as `paper` (2 local epochs, crop+flip), "
                        f"100 clients, 10 a round, 10 attackers acting when sampled, CIFAR-10 Dirichlet 0.5, "
                        f"whole test set; attack window W={DURABLE_GPU_WINDOW.attack_rounds} then "
                        f"D={DURABLE_GPU_WINDOW.clean_rounds} clean rounds after a warm start trained to a "
                        "plateau per seed (MA gain < 0.5 point between 50-round means, 200 to 1000 rounds); "
                        "--budget backfed-3x (6 local epochs at lr 0.05; benign: 2 at 0.02) or equal; single-shot: "
                        "5 attackers in one round, model replacement; "
                        f"{_pgd_note(PGD_EPS_RESNET18, 'estimated near 1 for ResNet-18, not measured')}; "
                        f"{_a3fl_note(DURABLE_GPU_WINDOW, _DURABLE_GPU_ROWS, _PAPER_TRAIN_RATE, 'GPU-hours')}; "
                        "CLIP-Fed and teacher "
                        "only with both reference teachers (the -strong-teacher rows); seed 0; about "
                        f"{DURABLE_GPU_HOURS:.0f} GPU-hours of rounds and A3FL trigger searches run by run "
                        "(estimated from `paper`'s rates)",
            base=_PAPER_BASE | _DURABLE_COMMON,
            settings={"cifar10-dir0.5": _DIRICHLET},
            defenses=DURABLE_DEFENSES,
            attacks=DURABLE_ATTACKS,
            seeds=(0,),
            pretrain_rounds=200,
            pretrain_keys=_DURABLE_PRETRAIN_KEYS,
            pretrain_per_seed=True,
            plateau=Plateau(chunk=50, window=50, min_gain=0.005, max_rounds=1000),
            variants=STRONG_TEACHER_VARIANTS,
            window=DURABLE_GPU_WINDOW,
            attack_variants=_durable_variants(PGD_EPS_RESNET18),
            budgets={"backfed-3x": {"attack-epochs": 6, "attack-lr": 0.05}, "equal": {}},
        ),
    )
}


def list_suites() -> list[str]:
    return list(SUITES)
