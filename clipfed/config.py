"""The run configuration: one pydantic model for every `--run-config` key.

Flower hands the ServerApp and each ClientApp a flat ``{key: value}`` mapping whose keys are
declared in ``pyproject.toml`` under ``[tool.flwr.app.config]``. ``RunConfig`` is the single
source of truth for their types, defaults and allowed values, so that a bad value stops a run
*before* any training with a message that names the key and what it accepts.

This module is a leaf: it imports nothing from clipfed, so every package can import it. The rules
here need the values alone; the rules that need a registry (a model, attack or defense name) or
another package live in ``clipfed.checks``, whose ``load_run_config`` is the way in from outside.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

NUM_CLASSES = {"cifar10": 10, "cifar10-lt": 10}
PATCH_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
# The teacher backends (clipfed.teacher's registry declares exactly these; a test checks it).
TEACHERS = ("reference", "openclip")
# What the reference teacher trains on (``teacher-pool``): the public pool, or the clean train split
TEACHER_POOLS = ("public", "train-split")
ORACLES = ("reference", "clipseg")  # the teacher guard's oracles (clipfed/guard/oracle.py's catalogue)
# CLIP-Fed's pre-aggregation signals (clipfed.defense.scoring computes each).
SIGNALS = ("kl", "proto", "trigger", "geometry", "sybil")
# The ``teacher-pretrained`` value that asks for an openclip teacher with random weights, on purpose.
RANDOM_INIT = "random"
RANDOM_INIT_NOTE = "RANDOM INIT (no knowledge)"
# A ``device`` value (clipfed.devices.resolve_device): the run's, and a teacher's or a diffusers
# pipeline's in a synthesis recipe.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


ROLES = ("benign", "malicious")
# The one node key that is no run-config key: a folder of the node's own training images
# (clipfed.data.local), which replaces its partition of the run's CIFAR-10 split.
LOCAL_DATA_KEY = "local-data-dir"
# Keys a SuperNode's node config may set for itself: run-config keys (where its data lies, and a
# malicious node's attack settings; the server measures ASR with the run config's trigger), and
# LOCAL_DATA_KEY.
NODE_KEYS = (
    LOCAL_DATA_KEY,
    "data-dir", "device", "attack", "attack-data", "attack-training", "attack-update", "attack-local-steps",
    "attack-epochs", "attack-lr", "pgd-eps", "pgd-every", "poison-rate", "target-label", "attack-start-round",
    "patch-size", "patch-position", "patch-pattern", "blend-alpha", "blend-pattern", "dba-parts", "freq-psnr",
    "freq-band-low", "freq-band-high", "flip-source", "boost-factor", "neurotoxin-keep",
    "a3fl-trigger-size", "a3fl-trigger-lr", "a3fl-outer-epochs", "a3fl-adv-epochs", "a3fl-adv-every",
    "a3fl-adv-weight", "f3ba-share",
    "constrain-alpha", "aware-lambda",
)
# What a node config may hold besides NODE_KEYS: the node's identity and resources.
NODE_IDENTITY_KEYS = ("partition-id", "num-partitions", "role", "malicious-rank", "num-threads")


def node_identity_problems(node: Mapping[str, Any]) -> list[str]:
    """Why a node config's ``role`` or ``malicious-rank`` cannot be used, or []."""
    problems = []
    role = node.get("role", "")
    if role and role not in ROLES:
        problems.append(f"role={role!r}; allowed: {', '.join(ROLES)}")
    rank = node.get("malicious-rank", 0)
    if isinstance(rank, bool) or not str(rank).isdecimal():
        problems.append(f"malicious-rank={rank!r}; allowed: an integer >= 0")
    return problems


def teacher_pool_unused(backend: str, pool: str, checkpoint: str) -> bool:
    """Whether a ``teacher-pool`` other than the default is set where nothing is trained on it:
    only a reference teacher without a checkpoint trains (the run key's and the flags' rule)."""
    return pool != "public" and (backend != "reference" or bool(checkpoint))


# open_clip model names that carry their own weights (open_clip's factory ignores ``pretrained``).
HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"
WEIGHTS_SCHEMAS = (HF_HUB, LOCAL_DIR)


def brings_own_weights(model: str) -> bool:
    """Whether ``teacher-model`` names a Hugging Face Hub repository or a local folder, from which
    open_clip reads the architecture and the weights together."""
    return model.startswith(WEIGHTS_SCHEMAS)


def teacher_weights_problem(backend: str, model: str, pretrained: str, checkpoint: str) -> str | None:
    """Why these teacher keys cannot be used, or None. An openclip teacher must name its weights:
    without them open_clip builds a random-init model whose results would look like real ones.
    An ``hf-hub:``/``local-dir:`` model names them itself, and open_clip would silently ignore a
    ``teacher-pretrained`` beside it, so one is refused (a checkpoint is loaded over them)."""
    if backend != "openclip":
        return None
    if brings_own_weights(model):
        if pretrained:
            return (f"teacher-pretrained={pretrained!r} has no effect with teacher-model={model!r}: open_clip "
                    "reads the weights from that repository or folder and ignores the tag; allowed: "
                    "teacher-pretrained='' (or teacher-checkpoint, loaded over those weights)")
        return None
    if not pretrained and not checkpoint:
        return ("teacher='openclip' needs its weights: set teacher-pretrained (teacher.pretrained in a "
                "synth config) to an open_clip tag such as 'laion2b_s34b_b79k', or teacher-checkpoint "
                f"(teacher.checkpoint) to a local weights file; teacher-pretrained='{RANDOM_INIT}' gives "
                f"random weights on purpose, and every output then says {RANDOM_INIT_NOTE}")
    if pretrained == RANDOM_INIT and checkpoint:
        return (f"teacher-pretrained='{RANDOM_INIT}' and teacher-checkpoint={checkpoint!r} contradict each "
                "other: give one")
    return None


class ConfigError(ValueError):
    """An invalid run configuration; the message names each bad key and its allowed values."""

    HEADER = "invalid run config:"

    @classmethod
    def listing(cls, problems: Sequence[str], header: str = HEADER) -> ConfigError:
        """One error for several problems, each a ``"key...: why; allowed: ..."`` line."""
        return cls("\n".join([header, *(f"  - {p}" for p in problems)]))

    @property
    def problems(self) -> list[str]:
        """The message's ``  - `` lines (the whole message when it has none), to merge errors."""
        text = str(self)
        lines = [line[4:] for line in text.splitlines() if line.startswith("  - ")]
        return lines or [text]


# Images per inference pass (evaluation on every device, CLIP-Fed's scoring on the CPU). 256 rather
# than 1000: on this project's 2-core CPU (1 torch thread) the CNN evaluated 10,000 test images in
# 2.6 s at 256 and 4.5 s at 1000, ResNet-20 2,000 in 2.4 s against 3.9 s (the activations of a
# smaller batch stay in cache), with bit-identical logits at 1 and 2 threads. Not measured on CUDA,
# where bf16 autocast may round differently with the batch (`eval-batch-size` sets it per run).
INFERENCE_BATCH = 256


class RunConfig(BaseModel):
    """Every run-config key, with its default. Field aliases are the hyphenated Flower keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Run identity and output
    seed: int = Field(0, ge=0)
    out_dir: str = Field("runs", alias="out-dir")
    run_name: str = Field("", alias="run-name")
    resume_from: str = Field("", alias="resume-from")  # a run folder with a checkpoint.pt
    init_model: str = Field("", alias="init-model")  # warm start: a run folder whose model starts this run

    # Federation
    num_server_rounds: int = Field(10, ge=1, alias="num-server-rounds")
    num_clients: int = Field(20, ge=1, alias="num-clients")
    fraction_train: float = Field(1.0, gt=0.0, le=1.0, alias="fraction-train")
    round_timeout: float = Field(600.0, gt=0.0, alias="round-timeout")

    # Data
    dataset: Literal["cifar10", "cifar10-lt"] = "cifar10"
    data_dir: str = Field("", alias="data-dir")
    partition: Literal["iid", "dirichlet"] = "dirichlet"
    dirichlet_alpha: float = Field(0.5, gt=0.0, alias="dirichlet-alpha")
    min_partition_size: int = Field(10, ge=0, alias="min-partition-size")
    imbalance_factor: float = Field(0.01, gt=0.0, le=1.0, alias="imbalance-factor")
    public_pool_fraction: float = Field(0.1, ge=0.0, lt=0.9, alias="public-pool-fraction")

    # Model and local training
    model: str = "cnn"
    local_epochs: int = Field(1, ge=1, alias="local-epochs")
    local_steps: int = Field(0, ge=0, alias="local-steps")  # cap on SGD steps per round; 0: whole epochs
    batch_size: int = Field(32, ge=1, alias="batch-size")
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, alias="weight-decay")

    # Attack
    attack: str = "badnets"
    num_malicious: int = Field(4, ge=0, alias="num-malicious")
    poison_rate: float = Field(0.5, gt=0.0, le=1.0, alias="poison-rate")
    target_label: int = Field(0, ge=0, alias="target-label")
    attack_start_round: int = Field(1, ge=1, alias="attack-start-round")
    # The last attacked round (0: to the end): an attack window [start, end] followed by clean
    # rounds shows how long a backdoor outlives its attackers (the `durable` bench suite).
    attack_end_round: int = Field(0, ge=0, alias="attack-end-round")
    # An attack is three parts (clipfed/attacks): how it poisons data, how it trains, how it rewrites
    # its update. ``attack`` names a shorthand for a triple; attack-data/-training/-update ("": the
    # shorthand's) replace one part each, e.g. attack='blended' attack-update='scaling'.
    attack_data: str = Field("", alias="attack-data")
    attack_training: str = Field("", alias="attack-training")
    attack_update: str = Field("", alias="attack-update")
    attack_local_steps: int = Field(0, ge=0, alias="attack-local-steps")  # attackers' SGD steps; 0: as benign
    attack_epochs: int = Field(0, ge=0, alias="attack-epochs")  # attackers' local epochs; 0: as benign
    attack_lr: float = Field(0.0, ge=0.0, alias="attack-lr")  # attackers' learning rate; 0: as benign
    pgd_eps: float = Field(2.0, gt=0.0, alias="pgd-eps")  # pgd: L2 radius around the global model
    pgd_every: int = Field(10, ge=1, alias="pgd-every")  # pgd: project every this many SGD steps
    patch_size: int = Field(4, ge=1, le=16, alias="patch-size")
    patch_position: Literal[PATCH_POSITIONS] = Field("bottom-right", alias="patch-position")  # type: ignore[valid-type]
    patch_pattern: Literal["checkerboard", "white", "random"] = Field(
        "checkerboard", alias="patch-pattern"
    )
    blend_alpha: float = Field(0.2, gt=0.0, lt=1.0, alias="blend-alpha")
    blend_pattern: Literal["noise", "stripes"] = Field("noise", alias="blend-pattern")
    dba_parts: int = Field(4, ge=1, le=16, alias="dba-parts")
    freq_psnr: float = Field(32.0, ge=20.0, alias="freq-psnr")
    freq_band_low: float = Field(0.35, ge=0.0, lt=1.0, alias="freq-band-low")
    freq_band_high: float = Field(0.75, gt=0.0, le=1.0, alias="freq-band-high")
    flip_source: int = Field(-1, ge=-1, alias="flip-source")
    boost_factor: float = Field(5.0, gt=0.0, alias="boost-factor")
    neurotoxin_keep: float = Field(0.9, gt=0.0, le=1.0, alias="neurotoxin-keep")
    # a3fl (clipfed/attacks/data/a3fl.py; defaults: the official code's): the learned patch's side
    # (px), its signed step (normalised units), passes over the shard per round, the unlearned copy's
    # epochs and how often (passes) it is rebuilt, and the adaptive term's weight (0: off)
    a3fl_trigger_size: int = Field(5, ge=1, le=16, alias="a3fl-trigger-size")
    a3fl_trigger_lr: float = Field(0.01, gt=0.0, alias="a3fl-trigger-lr")
    a3fl_outer_epochs: int = Field(200, ge=1, alias="a3fl-outer-epochs")
    a3fl_adv_epochs: int = Field(5, ge=1, alias="a3fl-adv-epochs")
    a3fl_adv_every: int = Field(1, ge=1, alias="a3fl-adv-every")
    a3fl_adv_weight: float = Field(0.01, ge=0.0, alias="a3fl-adv-weight")
    # f3ba (clipfed/attacks/data/f3ba.py): share of the first convolution layer's weights flipped
    f3ba_share: float = Field(0.02, gt=0.0, le=1.0, alias="f3ba-share")
    # constrain: loss = alpha * CE + (1 - alpha) * L2 distance to the global model (Bagdasaryan et al.)
    constrain_alpha: float = Field(0.7, gt=0.0, le=1.0, alias="constrain-alpha")
    # clipfed-aware: weight of its KL + prototype evasion term on its own probe (0: off)
    aware_lambda: float = Field(1.0, ge=0.0, alias="aware-lambda")

    # Teacher and server dataset (used by defenses that need them; see clipfed/data_synth)
    teacher: Literal[TEACHERS] = "reference"  # type: ignore[valid-type]
    teacher_model: str = Field("ViT-B-32", alias="teacher-model")
    teacher_pretrained: str = Field("", alias="teacher-pretrained")
    teacher_checkpoint: str = Field("", alias="teacher-checkpoint")
    # What the reference teacher trains on: the public pool (a weak teacher, as a CLIP's knowledge is
    # not the clients') or the whole clean train split (a strong one, that has seen images like theirs)
    teacher_pool: Literal[TEACHER_POOLS] = Field("public", alias="teacher-pool")  # type: ignore[valid-type]
    # Teacher guard: audit the teacher with a segmentation oracle before training (METHOD.md part 5)
    teacher_guard: Literal["off", "warn", "refuse", "repair"] = Field("off", alias="teacher-guard")
    teacher_guard_oracle: Literal[ORACLES] = Field("reference", alias="teacher-guard-oracle")  # type: ignore[valid-type]
    teacher_guard_oracle_model: str = Field("CIDAS/clipseg-rd64-refined", alias="teacher-guard-oracle-model")
    # The images to audit on: an npz (images, labels), e.g. data the teacher may have been poisoned
    # with; default: the public pool (a backdoor only shows on images that carry its trigger).
    teacher_guard_probe: str = Field("", alias="teacher-guard-probe")
    synth_config: str = Field("", alias="synth-config")
    synth_url: str = Field("", alias="synth-url")

    # CLIP-Fed (defense=clipfed; METHOD.md parts 3-4)
    clipfed_pre: bool = Field(True, alias="clipfed-pre")
    clipfed_post: bool = Field(True, alias="clipfed-post")
    clipfed_signals: str = Field("proto,sybil", alias="clipfed-signals")
    clipfed_z_threshold: float = Field(1.5, gt=0.0, alias="clipfed-z-threshold")
    # Weight of this round's combined score in a client's running score, an exponential moving
    # average over the rounds it was sampled in, which is what the threshold reads (1: this round's
    # score alone). Issue 20: a client's history across rounds (FLDetector's idea of consistency).
    clipfed_history_weight: float = Field(1.0, gt=0.0, le=1.0, alias="clipfed-history-weight")
    # Signals whose unusually *low* values are suspicious too, read at their own threshold ("": off):
    # an attacker that holds its model closer to the global one than honest training moves it
    # (clipfed-aware, pgd) is as atypical as one that moves it far. Issue 20.
    clipfed_low_signals: str = Field("", alias="clipfed-low-signals")
    clipfed_low_threshold: float = Field(2.0, gt=0.0, alias="clipfed-low-threshold")
    clipfed_probe_size: int = Field(500, ge=10, alias="clipfed-probe-size")
    clipfed_clip_norm: bool = Field(True, alias="clipfed-clip-norm")
    clipfed_post_steps: int = Field(60, ge=0, alias="clipfed-post-steps")
    clipfed_post_lr: float = Field(0.01, gt=0.0, alias="clipfed-post-lr")
    clipfed_post_batch: int = Field(128, ge=1, alias="clipfed-post-batch")
    clipfed_augmented: bool = Field(True, alias="clipfed-augmented")
    clipfed_lambda_kl: float = Field(1.0, ge=0.0, alias="clipfed-lambda-kl")
    clipfed_lambda_pc: float = Field(0.5, ge=0.0, alias="clipfed-lambda-pc")
    clipfed_lambda_ce: float = Field(0.0, ge=0.0, alias="clipfed-lambda-ce")
    clipfed_kd_temperature: float = Field(2.0, gt=0.0, alias="clipfed-kd-temperature")
    # What each server image is distilled towards (issue 20: distillation that adapts to how much
    # the teacher knows relative to the global model). teacher: the teacher's logits (the paper).
    # better-of: per image, the teacher's or the round's aggregate's own (frozen at the start of the
    # alignment), whichever gives the image's server label the higher probability: the pull to the
    # teacher stays where it knows better (a trigger-like copy that a backdoored aggregate sends to
    # the target class) and the aggregate keeps what it learned beyond a weak teacher.
    clipfed_kd_target: Literal["teacher", "better-of"] = Field("teacher", alias="clipfed-kd-target")
    clipfed_pc_temperature: float = Field(0.1, gt=0.0, alias="clipfed-pc-temperature")

    # Baseline defenses (clipfed list; each module documents its keys)
    krum_f: int = Field(-1, ge=-1, alias="krum-f")
    multikrum_m: int = Field(-1, ge=-1, alias="multikrum-m")
    trim_beta: float = Field(0.2, ge=0.0, lt=0.5, alias="trim-beta")
    flame_noise: float = Field(0.001, ge=0.0, alias="flame-noise")
    fltrust_root_size: int = Field(500, ge=1, alias="fltrust-root-size")
    rlr_threshold: int = Field(4, ge=1, alias="rlr-threshold")
    clip_norm: float = Field(2.0, gt=0.0, alias="clip-norm")
    dp_noise: float = Field(0.002, ge=0.0, alias="dp-noise")
    crfl_clip: float = Field(50.0, gt=0.0, alias="crfl-clip")
    crfl_noise: float = Field(0.001, ge=0.0, alias="crfl-noise")

    # Where it runs (clipfed/devices.py): auto = CUDA when visible; a node config may set its own.
    # The server's defense, evaluation, guard and synthesis (its openclip teacher) run there too.
    device: str = "auto"
    amp: bool = False  # bf16 autocast + channels-last on CUDA; no effect on the CPU
    augment: bool = False  # random 4-px-padded crop + horizontal flip in local training, after poisoning

    # Defense and evaluation
    max_update_norm: float = Field(1e4, gt=0.0, alias="max-update-norm")
    defense: str = "fedavg"
    eval_batch_size: int = Field(INFERENCE_BATCH, ge=1, alias="eval-batch-size")
    eval_samples: int = Field(0, ge=0, alias="eval-samples")  # fixed class-balanced test subset; 0: all

    @field_validator("clipfed_signals", "clipfed_low_signals")
    @classmethod
    def _known_signals(cls, value: str, info: ValidationInfo) -> str:
        names = [v.strip() for v in value.split(",") if v.strip()]
        unknown = [n for n in names if n not in SIGNALS]
        required = info.field_name == "clipfed_signals"  # the low side may be off
        if unknown or (not names and required):
            raise ValueError(f"unknown signal(s) {unknown or value!r}; allowed: a comma list of "
                             f"{', '.join(SIGNALS)}" + ("" if required else ' (or "": off)'))
        return ",".join(names)

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        if not re.fullmatch(DEVICE_PATTERN, value):
            raise ValueError(f"unknown device {value!r}; allowed: auto (CUDA when visible), cpu, cuda, cuda:N")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        """Combinations that can never work, found from the values alone (no registry, no data),
        all reported at once."""
        problems = []
        if self.num_malicious > self.num_clients:
            problems.append(f"num-malicious={self.num_malicious} exceeds num-clients={self.num_clients}; "
                            f"allowed: 0..{self.num_clients}")
        if self.target_label >= self.num_classes:
            problems.append(f"target-label={self.target_label} is not a class of {self.dataset}; "
                            f"allowed: 0..{self.num_classes - 1}")
        if self.flip_source >= self.num_classes:
            problems.append(flip_source_problem(self))
        if self.attack_end_round and self.attack_end_round < self.attack_start_round:
            problems.append(f"attack-end-round={self.attack_end_round} is before attack-start-round="
                            f"{self.attack_start_round}; allowed: 0 (attack until the end) or "
                            f">= {self.attack_start_round}")
        if self.freq_band_low >= self.freq_band_high:
            problems.append(f"freq-band-low={self.freq_band_low} is not below freq-band-high="
                            f"{self.freq_band_high}; allowed: freq-band-low < freq-band-high")
        # teacher='openclip' names its weights: refused here, before any round, rather than silently
        # running a random-init teacher
        if problem := teacher_weights_problem(self.teacher, self.teacher_model, self.teacher_pretrained,
                                              self.teacher_checkpoint):
            problems.append(problem)
        if teacher_pool_unused(self.teacher, self.teacher_pool, self.teacher_checkpoint):
            problems.append(f"teacher-pool={self.teacher_pool!r} says what the reference teacher trains on; "
                            f"teacher={self.teacher!r}"
                            + (f" with teacher-checkpoint={self.teacher_checkpoint!r}" if self.teacher_checkpoint
                               else "") + " trains nothing: allowed: teacher-pool='public' (the default)")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def clients_per_round(self) -> int:
        """How many partitions each round samples (``fraction-train`` of ``num-clients``, >= 1)."""
        return max(1, round(self.fraction_train * self.num_clients))

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES[self.dataset]

    @property
    def attack_enabled(self) -> bool:
        """Whether any client poisons; with zero malicious clients ASR still measures the trigger."""
        return self.attack != "none" and self.num_malicious > 0

    def attacks_in(self, server_round: int) -> bool:
        """Whether ``server_round`` lies in the attack window [attack-start-round,
        attack-end-round]; a malicious client acts only then, and only when sampled."""
        return server_round >= self.attack_start_round and (
            not self.attack_end_round or server_round <= self.attack_end_round)

    def to_flower(self) -> dict[str, Any]:
        """The config as Flower's flat run-config mapping (hyphenated keys)."""
        return self.model_dump(by_alias=True)

    def config_hash(self) -> str:
        """A short stable hash of every key that can change a result (not where results go). Keys at
        their default are left out, so a key added in a later version leaves every earlier config's
        hash as it was (a change of what a default computes bumps ``clipfed.__version__`` instead)."""
        content = {k: v for k, v in self.model_dump(by_alias=True, exclude_defaults=True).items()
                   if k not in ("out-dir", "run-name", "resume-from")}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """This module's rules on Flower's run config; ``ConfigError`` naming every bad key. Names
        of registered components are not checked here: ``clipfed.checks.load_run_config`` is."""
        try:
            return cls.model_validate(dict(run_config))
        except ValidationError as err:
            raise ConfigError(format_validation_error(err)) from None


def flip_source_problem(cfg: RunConfig) -> str:
    """``flip-source`` names no non-target class: nothing would be flipped and ASR has no images."""
    return (f"flip-source={cfg.flip_source} is not a non-target class of {cfg.dataset} (target-label="
            f"{cfg.target_label}): nothing would be flipped and ASR has no images; allowed: -1 (every "
            f"non-target class) or 0..{cfg.num_classes - 1} except {cfg.target_label}")


# Flower run-config key (the hyphenated alias) -> RunConfig field name, and back: the one map of the
# aliases that every module translating between the two reads.
FIELD_OF_KEY: dict[str, str] = {field.alias or name: name for name, field in RunConfig.model_fields.items()}
KEY_OF_FIELD: dict[str, str] = {name: key for key, name in FIELD_OF_KEY.items()}


def default_of(key: str) -> Any:
    """The default of run-config ``key`` (a Flower key). Raises ``KeyError`` for an unknown key."""
    return RunConfig.model_fields[FIELD_OF_KEY[key]].default


def format_validation_error(err: ValidationError) -> str:
    """Turn pydantic's report into lines that name the Flower key, the value and what is allowed."""
    lines = [ConfigError.HEADER]
    for problem in err.errors():
        key = ".".join(KEY_OF_FIELD.get(str(part), str(part)) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not key:  # a rule on several keys: each of its lines names them
            lines += [f"  - {line}" for line in message.splitlines()]
            continue
        if problem["type"] == "extra_forbidden":
            known = ", ".join(sorted(FIELD_OF_KEY))
            message = f"unknown key; known keys: {known}"
        elif problem["type"] == "literal_error":
            message = f"{message} (got {problem.get('input')!r})"
        elif "input" in problem and problem["type"] not in ("value_error",):
            message = f"{message} (got {problem['input']!r})"
        lines.append(f"  - {key}: {message}")
    return "\n".join(lines)


_KEY = re.compile(r"[A-Za-z0-9_-]+")
_QUOTED = re.compile(r"'[^'\n]*'" "|" r'"(?:[^"\\\n]|\\.)*"')
_WORD = re.compile(r"\S+")
_SPACE = re.compile(r"\s*")
_SCALARS = (bool, int, float, str)


def _skip_space(text: str, pos: int) -> int:
    return _SPACE.match(text, pos).end()  # type: ignore[union-attr]


def _word_at(text: str, pos: int) -> str:
    return _WORD.match(text, pos).group()  # type: ignore[union-attr]


def _toml_scalar(key: str, raw: str, problems: list[str]) -> tuple[bool, Any]:
    """``raw`` as one TOML bool/int/float/string, or (False, None) and a problem naming ``key``."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if "'" in raw:
            suggestion = f"{key}={json.dumps(raw)}?"
        else:  # the shell strips unprotected quotes: say how to keep them
            suggestion = f"{key}='{raw}'? In a shell, quote the whole text: \"{key}='{raw}'\""
        problems.append(f"{key}={raw}: {raw} is not a value (strings need quotes); did you mean {suggestion}")
        return False, None
    if isinstance(value, _SCALARS):
        return True, value
    problems.append(f"{key}={raw}: allowed: a bool, int, float or quoted string, not {type(value).__name__}")
    return False, None


def _not_a_pair(text: str, pos: int) -> tuple[str, str]:
    """The token at ``pos`` that is not ``key=value`` and a hint: ``num-clients 20`` (one token
    with its value), ``defense:'x'`` (another separator)."""
    word = _word_at(text, pos)
    key = _KEY.fullmatch(word)
    after = _skip_space(text, pos + len(word))
    if key is not None and after < len(text) and "=" not in _word_at(text, after):
        value = _word_at(text, after)
        return text[pos:after] + value, f"; did you mean {word}={value}?"
    key = _KEY.match(word)
    if key is not None and word[key.end():key.end() + 1] == ":":
        return word, f"; did you mean {key.group()}={word[key.end() + 1:]}?"
    return word, ""


def _parse_pairs(text: str, problems: list[str]) -> dict[str, Any]:
    """Scan ``k=v k2 = v2`` (TOML values, spaces around '=' allowed); any other token is a problem."""
    values: dict[str, Any] = {}
    pos = _skip_space(text, 0)
    while pos < len(text):
        key = _KEY.match(text, pos)
        equals = _skip_space(text, key.end()) if key else pos
        if key is None or text[equals:equals + 1] != "=":
            token, hint = _not_a_pair(text, pos)
            problems.append(f"{token!r} is not key=value{hint}")
            pos = _skip_space(text, pos + len(token))
            continue
        start = _skip_space(text, equals + 1)
        if start >= len(text):
            problems.append(f"{key.group()}=: no value")
            break
        raw = _QUOTED.match(text, start) if text[start] in "'\"" else _WORD.match(text, start)
        if raw is None:
            problems.append(f"{text[pos:].strip()}: the quote is never closed")
            break
        end = raw.end()
        if end < len(text) and not text[end].isspace():  # a='x'b=1
            end += len(_word_at(text, end))
            problems.append(f"{text[pos:end]!r}: put a space between key=value pairs")
        else:
            ok, value = _toml_scalar(key.group(), raw.group(), problems)
            if ok:
                values[key.group()] = value
        pos = _skip_space(text, end)
    return values


def parse_config_text(texts: Sequence[str] | None, what: str = "run config") -> dict[str, Any]:
    """``--run-config``/``--node-config`` texts into ``{key: value}``, strictly.

    Each text is ``k=v`` pairs with TOML values (as ``flwr run --run-config``: ``seed=3
    defense='clipfed'``; spaces around '=' are allowed), or the path of a ``.toml`` file of such
    keys; later texts override earlier ones. Flower's own parser drops whatever its pattern does not
    match; here any other text raises ``ConfigError`` naming every bad token at once.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for text in texts or []:
        path = text.strip()
        if "=" in text or not path.endswith(".toml"):
            values.update(_parse_pairs(text, problems))
            continue
        try:
            table = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
        except OSError as err:
            problems.append(f"{path}: cannot read this {what} file ({err.strerror})")
            continue
        except tomllib.TOMLDecodeError as err:
            problems.append(f"{path}: not TOML ({err})")
            continue
        for key, value in table.items():
            if isinstance(value, _SCALARS):
                values[key] = value
            else:
                problems.append(f"{key} (in {path}): allowed: a bool, int, float or string, "
                                f"not {type(value).__name__}")
    if problems:
        raise ConfigError.listing(problems, f"invalid {what} text:")
    return values
