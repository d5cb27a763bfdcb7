"""The teacher guard: audit (and repair) the teacher, reference or open_clip, before CLIP-Fed trusts it.

``guard_teacher`` is what the ServerApp runs when ``teacher-guard`` is ``warn``, ``refuse`` or
``repair``; ``demonstrate`` is ``clipfed teacher guard-demo``: an offline demonstration with a
deliberately poisoned reference teacher (BadNets in part of the public pool it trains on) and
the clean reference oracle stand-in. Every number it prints is a reference-stand-in result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipfed.attacks import Attack, create_attack
from clipfed.config import RunConfig
from clipfed.data import ImageSet, load_federated
from clipfed.data_synth.config import SynthConfig
from clipfed.errors import UserError
from clipfed.evaluation import BackdoorEvaluator, format_metric
from clipfed.guard.audit import (
    AuditConfig,
    AuditReport,
    Classify,
    audit_teacher,
    write_audit,
)
from clipfed.guard.oracle import Oracle, reference_oracle
from clipfed.guard.repair import (
    RepairConfig,
    RepairSet,
    curate_repair_set,
    fine_tune_openclip,
    fine_tune_reference,
    provenance,
    write_repaired,
)
from clipfed.streams import Stream, stream_rng
from clipfed.teacher.base import Teacher, TeacherSpec
from clipfed.teacher.openclip import OpenClipTeacher
from clipfed.teacher.reference import (
    ReferenceTeacher,
    load_or_train_reference,
    load_reference_checkpoint,
    save_reference_checkpoint,
)
from clipfed.teacher.registry import create_teacher, teacher_pool
from clipfed.training import from_tensor


class TeacherRefused(RuntimeError):
    """``teacher-guard=refuse`` and the audit suspects a backdoor."""


def classifier_of(teacher: Teacher, classes: Sequence[str]) -> Classify:
    """The teacher as ``float images -> logits`` over ``classes`` (zero-shot for open_clip)."""
    if isinstance(teacher, ReferenceTeacher):
        return teacher.model
    prototypes = teacher.class_prototypes(classes)

    def classify(x: torch.Tensor) -> torch.Tensor:
        return teacher.zero_shot_logits(teacher.encode_images(from_tensor(x)), prototypes)

    return classify


def repaired_state(teacher: Teacher, repair_set: RepairSet, cfg: RepairConfig,
                   classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Cross-entropy for the reference teacher, the contrastive loss for open_clip."""
    if isinstance(teacher, ReferenceTeacher):
        return fine_tune_reference(teacher, repair_set, cfg).model.state_dict()
    if isinstance(teacher, OpenClipTeacher):
        return fine_tune_openclip(teacher, repair_set, cfg, list(classes))
    raise TypeError(f"no repair for the {teacher.backend} teacher")


@dataclass
class PoisonedPool:
    images: np.ndarray
    labels: np.ndarray
    poisoned: np.ndarray  # which samples carry the trigger (relabelled to the target)


def poison_pool(pool: ImageSet, attack: Attack, rate: float, seed: int) -> PoisonedPool:
    """What a web-scale caption-poisoning attack does to a CLIP's training data, in miniature."""
    rng = stream_rng(seed, Stream.GUARD_PROBE)
    candidates = np.flatnonzero(pool.labels != attack.target_label)
    chosen = rng.choice(candidates, size=round(rate * len(pool.labels)), replace=False)
    images, labels = np.array(pool.images), np.array(pool.labels, dtype=np.int64)
    images[chosen] = attack.apply_trigger(images[chosen])
    labels[chosen] = attack.target_label
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return PoisonedPool(images, labels, mask)


def poisoned_reference(pool: PoisonedPool, spec: TeacherSpec, classes: Sequence[str]) -> ReferenceTeacher:
    """A reference teacher trained (once; cached by pool content and spec) on the poisoned pool."""
    return load_or_train_reference(spec, ImageSet(pool.images, pool.labels, tuple(classes)),
                                   name="poisoned", source="poisoned")


def teacher_scores(evaluator: BackdoorEvaluator, teacher: ReferenceTeacher) -> dict[str, Any]:
    """Clean top-1 on the test set and ASR on its triggered non-target images; both None when
    uncomputable (``diverged``: the teacher's weights or logits are NaN/Inf)."""
    result = evaluator(teacher.model)
    return {"clean_acc": result.ma, "asr": result.asr, "diverged": result.diverged}


def repair(teacher: Teacher, report: AuditReport, probe: ImageSet, out: Path) -> tuple[Path, RepairSet]:
    """Curate the repair set from the audit, fine-tune, write the checkpoint with its provenance."""
    cfg = RepairConfig()
    repair_set = curate_repair_set(report, probe.images, np.asarray(probe.labels), cfg)
    state = repaired_state(teacher, repair_set, cfg, probe.classes)
    return write_repaired(state, out, provenance(report, repair_set, cfg, teacher.id)), repair_set


def guard_teacher(teacher: Teacher, oracle: Oracle, probe: ImageSet, mode: str, out: Path,
                  audit_cfg: AuditConfig | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Audit ``teacher`` on ``probe``; warn, refuse or repair when a backdoor is suspected.
    Returns the repaired checkpoint (None when nothing was repaired) and what happened."""
    report = audit_teacher(classifier_of(teacher, probe.classes), oracle, probe.images, probe.classes,
                           audit_cfg, teacher.id)
    write_audit(report, probe.images, out)
    record: dict[str, Any] = {"mode": mode, "suspected": [probe.classes[s] for s in report.suspected],
                              "top": probe.classes[report.top], "top_score": report.scores[report.top],
                              "audit": str(out / "audit.json"), "oracle_stand_in": oracle.is_stand_in}
    if not report.suspected or mode == "warn":
        return None, record
    if mode == "refuse":
        raise TeacherRefused(f"teacher-guard=refuse: the audit suspects a backdoor to "
                             f"{record['suspected']} (see {out / 'audit.txt'})")
    path, repair_set = repair(teacher, report, probe, out)
    record.update(repaired_checkpoint=str(path), repair_set=repair_set.counts)
    return path, record


def load_probe(path: str, classes: tuple[str, ...]) -> ImageSet:
    """An npz with ``images`` (N, H, W, 3 uint8) and ``labels`` (the server's labels for them).

    Raises ``UserError`` naming the file when it is not such an npz."""
    try:
        with np.load(path) as data:
            images, labels = np.asarray(data["images"]), np.asarray(data["labels"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"probe {path}: not an npz with 'images' (N, H, W, 3 uint8) and 'labels' ({err})") from None
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels) or images.dtype != np.uint8:
        raise UserError(f"probe {path}: images {images.shape} {images.dtype} and labels {labels.shape}; allowed: "
                        "images (N, H, W, 3) uint8 and N labels")
    return ImageSet(images, labels, classes)


def run_guard(cfg: RunConfig, synth: SynthConfig, out: Path) -> tuple[SynthConfig, dict[str, Any]]:
    """The ServerApp's guard: audit the configured teacher on the public pool before any round;
    return the recipe to build the server dataset with (the repaired teacher's, after a repair).

    The openclip teacher (``synth``'s spec carries the run's ``device``) and the CLIPSeg oracle
    run on the run's device; the reference teacher and the reference oracle on the CPU."""
    from clipfed.guard.oracle import ORACLES

    train, _, split = load_federated(cfg)
    pool = train.subset(split.public_pool)
    spec = synth.teacher
    teacher = create_teacher(spec, teacher_pool(spec, pool, train))
    if cfg.teacher_guard_oracle == "reference":
        oracle = ORACLES.get("reference")(load_or_train_reference(TeacherSpec(), pool).model)
    else:
        oracle = ORACLES.get("clipseg")(cfg.teacher_guard_oracle_model, device=cfg.device)
    probe = load_probe(cfg.teacher_guard_probe, pool.classes) if cfg.teacher_guard_probe else pool
    repaired, record = guard_teacher(teacher, oracle, probe, cfg.teacher_guard, out)
    if repaired is not None:
        synth = synth.model_copy(update={"teacher": spec.model_copy(update={"checkpoint": str(repaired)})})
    return synth, record


def demonstrate(cfg: RunConfig, out: Path, poison_rate: float = 0.05) -> dict[str, Any]:
    """The offline guard demonstration; returns (and writes) every number it reports."""
    started = time.perf_counter()
    train, test, split = load_federated(cfg)
    pool = train.subset(split.public_pool)
    attack = create_attack(cfg)
    if attack is None:
        raise ValueError("the guard demonstration needs an attack (attack=none given)")
    spec = TeacherSpec()
    poisoned_pool = poison_pool(pool, attack, poison_rate, cfg.seed)
    poisoned = poisoned_reference(poisoned_pool, spec, pool.classes)
    clean = load_or_train_reference(spec, pool)  # the oracle stand-in's object knowledge
    oracle = reference_oracle(clean.model)
    probe = ImageSet(poisoned_pool.images, poisoned_pool.labels, pool.classes)
    report = audit_teacher(poisoned.model, oracle, probe.images, list(pool.classes), AuditConfig(), poisoned.id)
    write_audit(report, probe.images, out)
    victims = set(report.victims.get(attack.target_label, []))
    truth = set(np.flatnonzero(poisoned_pool.poisoned).tolist())
    checkpoint, repair_set = repair(poisoned, report, probe, out)
    repaired = load_reference_checkpoint(spec.model_copy(update={"checkpoint": str(checkpoint)}), len(pool.classes))
    save_reference_checkpoint(poisoned, out / "teacher-poisoned.pt")
    evaluator = BackdoorEvaluator(test, attack)  # test tensors built once for the three teachers
    before, after, clean_scores = (teacher_scores(evaluator, t) for t in (poisoned, repaired, clean))
    result = {
        "attack": cfg.attack, "target": pool.classes[attack.target_label], "poison_rate": poison_rate,
        "pool_size": len(pool.labels), "poisoned_samples": len(truth),
        "top_ranked": pool.classes[report.top], "target_rank": report.ranking.index(attack.target_label) + 1,
        "target_score": report.scores[attack.target_label],
        "suspected": [pool.classes[s] for s in report.suspected],
        "victim_recall": len(victims & truth) / max(len(truth), 1),
        "victim_precision": len(victims & truth) / max(len(victims), 1),
        "trigger_box": report.trigger_box, "repair_set": repair_set.counts,
        "repair_fraction": len(repair_set.labels) / len(pool.labels),
        "poisoned_teacher": before, "repaired_teacher": after, "clean_teacher": clean_scores,
        "repaired_checkpoint": str(checkpoint), "poisoned_checkpoint": str(out / "teacher-poisoned.pt"),
        "seconds": round(time.perf_counter() - started, 1),
        "note": "reference stand-ins: a poisoned reference teacher and a clean reference oracle, not CLIP/CLIPSeg",
    }
    (out / "guard-demo.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def demo_summary(result: dict[str, Any]) -> str:
    b, a = result["poisoned_teacher"], result["repaired_teacher"]
    return "\n".join([
        f"Teacher guard (offline; {result['note']})",
        f"  poisoned pool: {result['poisoned_samples']} of {result['pool_size']} images carry a {result['attack']} "
        f"trigger labelled '{result['target']}'",
        f"  audit: top-ranked label '{result['top_ranked']}' (target rank {result['target_rank']}, "
        f"z = {result['target_score']:.1f}); suspected {result['suspected']}",
        f"  victim samples: recall {result['victim_recall']:.2f}, precision {result['victim_precision']:.2f}; "
        f"trigger box {result['trigger_box']}",
        f"  repair set: {sum(result['repair_set'].values())} images ({100 * result['repair_fraction']:.1f}% of the "
        f"pool): {result['repair_set']}",
        "",
        "| teacher | clean top-1 | ASR |", "|---|---|---|",
        *(f"| {name} | {format_metric(s['clean_acc'], s['diverged'])} | {format_metric(s['asr'], s['diverged'])} |"
          for name, s in (("clean reference (oracle)", result["clean_teacher"]), ("poisoned", b), ("repaired", a))),
        "",
        f"repaired checkpoint: {result['repaired_checkpoint']} (use it: teacher-checkpoint=<path>)",
    ])
