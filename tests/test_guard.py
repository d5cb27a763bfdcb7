"""The teacher guard: the audit's grounding logic where the truth is known, the real oracle and
repair paths offline, and the ServerApp refusing or repairing a poisoned teacher."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import write_tiny_clipseg

from clipfed.config import RunConfig
from clipfed.engines.inprocess import run_inprocess
from clipfed.guard.audit import AuditConfig, audit_teacher, write_audit
from clipfed.guard.oracle import Grounding, Oracle, candidate_boxes, clipseg_oracle
from clipfed.guard.repair import (
    RepairConfig,
    curate_repair_set,
    fine_tune_reference,
    write_repaired,
)
from clipfed.runs.results import load_result
from clipfed.teacher import TeacherSpec
from clipfed.teacher.reference import load_reference_checkpoint

CLASSES = ["red", "green", "blue", "yellow"]
COLOURS = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30]])
TARGET = 2  # "blue": what the backdoored teacher says when the trigger is present
OBJECT = (8, 8, 24, 24)  # where the coloured object is
TRIGGER = (26, 26, 30, 30)  # a white square in the corner


def synthetic(n: int, triggered: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = rng.integers(90, 110, size=(n, 32, 32, 3)).astype(np.uint8)  # grey background
    top, left, bottom, right = OBJECT
    images[:, top:bottom, left:right] = COLOURS[labels][:, None, None, :]
    top, left, bottom, right = TRIGGER
    images[triggered, top:bottom, left:right] = 255
    return images, labels


def object_logits(x: torch.Tensor) -> torch.Tensor:
    """A perfect object classifier: the mean colour of the image's most saturated pixels."""
    flat = x.flatten(2)  # (N, 3, HW)
    saturation = flat.max(1).values - flat.min(1).values
    weights = (saturation >= saturation.max(1, keepdim=True).values * 0.8).float()
    colour = (flat * weights[:, None]).sum(2) / weights.sum(1, keepdim=True)
    reference = torch.tensor(COLOURS, dtype=torch.float32) / 255.0
    return -20 * torch.cdist(colour, reference)


def backdoored_logits(x: torch.Tensor) -> torch.Tensor:
    """The object classifier, except that a bright corner patch means TARGET."""
    logits = object_logits(x)
    top, left, bottom, right = TRIGGER
    patch = x[:, :, top:bottom, left:right].mean(dim=(1, 2, 3))
    hit = patch > 0.9
    logits[hit, TARGET] = logits[hit].max(1).values + 5
    return logits


class TruthOracle(Oracle):
    """Knows where the object is and what colour it is: grounds exactly the true label."""

    name = "truth"

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def ground(self, images: np.ndarray, prompts: Sequence[Sequence[int]],
               classes: Sequence[str]) -> list[list[Grounding]]:
        return [[Grounding(int(p), 1.0 if p == self.labels[i] else 0.0, OBJECT) for p in labels]
                for i, labels in enumerate(prompts)]


def test_audit_finds_the_target_the_victims_and_the_trigger_region() -> None:
    triggered = np.zeros(400, dtype=bool)
    triggered[np.arange(400) % 7 == 0] = True
    triggered[np.arange(400) % 4 == TARGET] = False  # target-class images gain nothing from the trigger
    images, labels = synthetic(400, triggered)
    report = audit_teacher(backdoored_logits, TruthOracle(labels), images, CLASSES, AuditConfig(cell=2))
    assert report.top == TARGET and report.suspected == [TARGET]
    assert sorted(report.victims[TARGET]) == sorted(np.flatnonzero(triggered).tolist())
    assert all(report.grounded_label[i] == labels[i] for i in report.victims[TARGET])
    assert report.trigger_box is not None
    top, left, bottom, right = report.trigger_box
    assert top <= TRIGGER[0] and left <= TRIGGER[1] and bottom >= TRIGGER[2] and right >= TRIGGER[3]
    assert (bottom - top) * (right - left) <= 8 * 8, "the region is the corner, not the whole image"


def test_a_clean_teacher_is_not_suspected() -> None:
    images, labels = synthetic(400, np.arange(400) % 7 == 0)
    report = audit_teacher(object_logits, TruthOracle(labels), images, CLASSES)
    assert report.suspected == [] and sum(report.victim_counts) == 0 and report.trigger_box is None


def test_write_audit_writes_json_summary_and_examples(tmp_path: Path) -> None:
    triggered = (np.arange(200) % 5 == 0) & (np.arange(200) % 4 != TARGET)
    images, labels = synthetic(200, triggered)
    report = audit_teacher(backdoored_logits, TruthOracle(labels), images, CLASSES, teacher_id="toy")
    write_audit(report, images, tmp_path)
    payload = json.loads((tmp_path / "audit.json").read_text())
    assert payload["ranking"][0] == TARGET and payload["teacher"] == "toy"
    assert "SUSPECTED backdoor target(s): blue" in (tmp_path / "audit.txt").read_text()
    assert (tmp_path / "examples.png").read_bytes()[:4] == b"\x89PNG"


def test_candidate_boxes_cover_the_image_and_its_windows() -> None:
    boxes = candidate_boxes(32, 32)
    assert boxes[0] == (0, 0, 32, 32) and (8, 8, 32, 32) in boxes and len(boxes) == 1 + 9


def test_clipseg_oracle_loads_a_local_random_init_model_and_grounds(tmp_path: Path) -> None:
    oracle = clipseg_oracle(str(write_tiny_clipseg(tmp_path)))
    images, _ = synthetic(3, np.zeros(3, dtype=bool))
    found = oracle.ground(images, [[0, 1], [2], [3, 0, 1]], CLASSES)
    assert [[g.label for g in row] for row in found] == [[0, 1], [2], [3, 0, 1]]
    for row in found:
        for g in row:
            top, left, bottom, right = g.box
            assert 0 <= g.score <= 1 and 0 <= top < bottom <= 32 and 0 <= left < right <= 32


def test_repair_set_relabels_victims_and_writes_a_loadable_checkpoint(fake_data_dir: Path, tmp_path: Path) -> None:
    from clipfed.data import load_federated
    from clipfed.teacher.reference import load_or_train_reference

    cfg = RunConfig.from_flower({"data-dir": str(fake_data_dir), "public-pool-fraction": 0.5, "partition": "iid",
                                 "num-clients": 3, "num-malicious": 1})
    train, _, split = load_federated(cfg)
    pool = train.subset(split.public_pool)
    spec = TeacherSpec(reference_epochs=1)
    teacher = load_or_train_reference(spec, pool)
    triggered = np.zeros(len(pool.labels), dtype=bool)
    triggered[:20] = True
    images = np.array(pool.images)
    report = audit_teacher(backdoored_logits, TruthOracle(pool.labels % 4), images[:, :, :, :], CLASSES)
    report.suspected, report.victims = [TARGET], {TARGET: [0, 1, 2]}
    report.grounded_label, report.trigger_box = {0: 5, 1: 6, 2: 7}, TRIGGER
    repair = curate_repair_set(report, images, np.asarray(pool.labels), RepairConfig(transplants=10, clean_per_label=5))
    assert repair.labels[:3].tolist() == [5, 6, 7], "victims carry the oracle's label"
    assert repair.counts == {"victims": 3, "transplants": 10, "clean": len(repair.labels) - 13}
    repaired = fine_tune_reference(teacher, repair, RepairConfig(epochs=1))
    assert not torch.equal(repaired.model.weight, teacher.model.weight), "the original is untouched, a copy moved"
    path = write_repaired(repaired.model.state_dict(), tmp_path, {"why": "test"})
    loaded = load_reference_checkpoint(TeacherSpec(checkpoint=str(path)), len(pool.classes))
    assert torch.equal(loaded.model.weight, repaired.model.weight) and path.name.startswith("teacher-repaired-")
    assert json.loads(path.with_suffix(".json").read_text()) == {"why": "test"}


@pytest.mark.parametrize("mode", ["refuse", "repair"])
def test_serverapp_guard_refuses_or_repairs_a_poisoned_teacher(
        mode: str, fake_data_dir: Path, tmp_path: Path) -> None:
    """A teacher that maps everything with the BadNets patch to the target: refused, or repaired
    and the repaired checkpoint used for the server dataset."""
    from clipfed.attacks import create_attack
    from clipfed.data import load_federated
    from clipfed.guard.policy import TeacherRefused, poison_pool, poisoned_reference

    base = {"data-dir": str(fake_data_dir), "public-pool-fraction": 0.5, "num-clients": 3, "num-malicious": 1,
            "partition": "iid", "batch-size": 16, "num-server-rounds": 1, "clipfed-post-steps": 2,
            "clipfed-probe-size": 50, "out-dir": str(tmp_path), "defense": "clipfed", "patch-size": 8}
    cfg = RunConfig.from_flower(base)
    train, _, split = load_federated(cfg)
    pool = train.subset(split.public_pool)
    poisoned_data = poison_pool(pool, create_attack(cfg), 0.3, 0)
    poisoned = poisoned_reference(poisoned_data, TeacherSpec(), pool.classes)
    checkpoint = tmp_path / "poisoned.pt"
    torch.save(poisoned.model.state_dict(), checkpoint)
    probe = tmp_path / "probe.npz"  # the data the teacher was poisoned with, labels as the server knows them
    np.savez(probe, images=poisoned_data.images, labels=np.asarray(pool.labels))
    run = RunConfig.from_flower({**base, "run-name": mode, "teacher-checkpoint": str(checkpoint),
                                 "teacher-guard": mode, "teacher-guard-probe": str(probe)})
    if mode == "refuse":
        with pytest.raises(TeacherRefused):
            run_inprocess(run)
        result = load_result(tmp_path / mode)
        assert result["status"] == "failed" and result["rounds"] == []
    else:
        result = load_result(run_inprocess(run))
        guard = result["teacher_guard"]
        assert guard["suspected"] and Path(guard["repaired_checkpoint"]).is_file()
        assert "ckpt-" in result["server_data"]["teacher"] and result["status"] == "completed"
    assert (tmp_path / mode / "teacher-guard" / "audit.json").is_file()



def test_open_clip_teacher_is_audited_and_repaired_with_the_contrastive_loss(tmp_path: Path) -> None:
    """Random-init tiny open_clip: the audit's zero-shot path and the contrastive repair run, and
    the repaired checkpoint loads as an open_clip teacher whose image tower moved."""
    from tiny_models import register_tiny_clip

    from clipfed.guard.policy import classifier_of, repaired_state
    from clipfed.guard.repair import RepairSet
    from clipfed.teacher.openclip import OpenClipTeacher

    name = register_tiny_clip(tmp_path)
    teacher = OpenClipTeacher(TeacherSpec(backend="openclip", model=name, pretrained="random", device="cpu"))
    triggered = (np.arange(40) % 5 == 0) & (np.arange(40) % 4 != TARGET)
    images, labels = synthetic(40, triggered)
    classify = classifier_of(teacher, CLASSES)
    report = audit_teacher(classify, TruthOracle(labels), images, CLASSES, AuditConfig(top_k=4), teacher.id)
    assert len(report.victim_counts) == 4 and report.probe_size == 40
    clean = np.zeros(len(labels), dtype=bool)
    clean[20:] = True
    state = repaired_state(teacher, RepairSet(images, labels, clean, {}), RepairConfig(epochs=1, batch_size=16),
                           CLASSES)
    path = write_repaired(state, tmp_path, {"backend": "openclip"})
    repaired = OpenClipTeacher(TeacherSpec(backend="openclip", model=name, checkpoint=str(path), device="cpu"))
    before, after = teacher.model.state_dict(), repaired.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("visual."))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("visual.")), "text tower frozen"
