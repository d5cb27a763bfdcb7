"""Repairing a backdoored teacher with a compact fine-tuning set curated from its audit.

The repair set (ours, following the paper's abstract: "a small, targeted fine-tuning set"):
- the victim samples of each suspected label, trigger kept, relabelled with the label the
  oracle grounded in them (the teacher must learn the trigger means nothing);
- trigger transplants: the candidate trigger region of victims pasted onto clean probe images of
  other labels, with their own labels (the same lesson on new images);
- a small clean set per affected label (suspected targets and the grounded labels), so that
  clean accuracy holds.
The reference teacher is fine-tuned with cross-entropy, an open_clip teacher with the contrastive
image-text loss against the class captions; both also keep the original's behaviour on the clean
rows (distillation), since a small set alone drags clean accuracy down.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.guard.audit import AuditReport
from clipfed.teacher.openclip import OpenClipTeacher
from clipfed.teacher.reference import ReferenceTeacher
from clipfed.training import random_crop_flip, to_tensor


@dataclass
class RepairConfig:
    clean_per_label: int = 50
    transplants: int = 250
    epochs: int = 4
    lr: float = 0.005
    batch_size: int = 64
    distill: float = 1.0  # weight of keeping the original teacher's outputs on the clean rows
    temperature: float = 2.0
    seed: int = 0


@dataclass
class RepairSet:
    images: np.ndarray
    labels: np.ndarray
    clean: np.ndarray  # rows without any trigger: the original teacher is kept there
    counts: dict[str, int]


def curate_repair_set(report: AuditReport, probe_images: np.ndarray, probe_labels: np.ndarray,
                      cfg: RepairConfig) -> RepairSet:
    """``probe_labels``: the server's labels for its own (public) probe images; victims use the
    oracle's label instead, and are left out of the clean part."""
    rng = np.random.default_rng(cfg.seed)
    suspected_victims = [i for label in report.suspected for i in report.victims.get(label, [])]
    victims = np.array(sorted(set(suspected_victims)), dtype=np.int64)
    parts_x = [probe_images[victims]]
    parts_y = [np.array([report.grounded_label[int(i)] for i in victims], dtype=np.int64)]
    clean_pool = np.setdiff1d(np.arange(len(probe_images)), victims)

    transplants = 0
    if report.trigger_box is not None and len(victims) and cfg.transplants:
        top, left, bottom, right = report.trigger_box
        hosts = rng.choice(clean_pool[~np.isin(probe_labels[clean_pool], report.suspected)],
                           size=cfg.transplants, replace=True)
        donors = rng.choice(victims, size=cfg.transplants, replace=True)
        pasted = probe_images[hosts].copy()
        pasted[:, top:bottom, left:right] = probe_images[donors][:, top:bottom, left:right]
        parts_x.append(pasted)
        parts_y.append(probe_labels[hosts].astype(np.int64))
        transplants = len(hosts)

    affected = sorted(set(report.suspected) | set(parts_y[0].tolist()))
    per_label = []
    for label in affected:
        rows = clean_pool[probe_labels[clean_pool] == label]
        per_label.append(rng.choice(rows, size=min(cfg.clean_per_label, len(rows)), replace=False))
    clean = np.concatenate(per_label) if per_label else np.array([], dtype=np.int64)
    parts_x.append(probe_images[clean])
    parts_y.append(probe_labels[clean].astype(np.int64))
    labels = np.concatenate(parts_y)
    is_clean = np.zeros(len(labels), dtype=bool)
    is_clean[len(labels) - len(clean):] = True
    return RepairSet(np.concatenate(parts_x), labels, is_clean,
                     {"victims": len(victims), "transplants": transplants, "clean": len(clean)})


def fine_tune_reference(teacher: ReferenceTeacher, repair: RepairSet, cfg: RepairConfig) -> ReferenceTeacher:
    """A fine-tuned copy (the original is untouched): SGD with crop/flip; cross-entropy on every
    row, plus distillation from the original teacher on the clean rows (so that what it knew
    stays: a small set alone drags clean accuracy down)."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    original = copy.deepcopy(teacher.model).eval()
    model = copy.deepcopy(teacher.model).train()
    x, y = to_tensor(repair.images), torch.from_numpy(repair.labels)
    clean = torch.from_numpy(repair.clean)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    t = cfg.temperature
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            batch = random_crop_flip(x[idx], generator, fill="reflect")  # the reference teacher's recipe
            logits = model(batch)
            loss = F.cross_entropy(logits, y[idx])
            keep = clean[idx]
            if cfg.distill and bool(keep.any()):
                with torch.no_grad():
                    target = F.softmax(original(batch[keep]) / t, dim=1)
                loss = loss + cfg.distill * t * t * F.kl_div(
                    F.log_softmax(logits[keep] / t, dim=1), target, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return ReferenceTeacher(model.eval(), "repaired", teacher.spec)


def fine_tune_openclip(teacher: OpenClipTeacher, repair: RepairSet, cfg: RepairConfig,
                       classes: list[str]) -> dict[str, torch.Tensor]:
    """The contrastive image-text loss for an open_clip teacher: each repair image against the
    class captions (its label's caption is the positive), image tower only, plus keeping the
    original image embeddings on the clean rows. Returns the new state dict."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    original = teacher.model.eval()
    model = copy.deepcopy(teacher.model).train()
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.visual.parameters():
        param.requires_grad_(True)
    with torch.no_grad():
        captions = F.normalize(model.encode_text(
            teacher.tokenizer([teacher.spec.templates[0].format(c) for c in classes]).to(teacher.device)), dim=-1)
    y, clean = torch.from_numpy(repair.labels).to(teacher.device), torch.from_numpy(repair.clean)
    optimizer = torch.optim.SGD(model.visual.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    scale = teacher.logit_scale
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            pixels = teacher.preprocess(repair.images[idx.numpy()])
            embeddings = F.normalize(model.encode_image(pixels), dim=-1)
            loss = F.cross_entropy(scale * embeddings @ captions.T, y[idx])
            keep = clean[idx].to(teacher.device)
            if cfg.distill and bool(keep.any()):
                with torch.no_grad():
                    before = F.normalize(original.encode_image(pixels[keep]), dim=-1)
                loss = loss + cfg.distill * (1 - (embeddings[keep] * before).sum(-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def write_repaired(state: dict[str, torch.Tensor], out: Path, provenance: dict[str, Any]) -> Path:
    """Save a state dict as ``teacher-repaired-<sha12>.pt`` (content-addressed, so caches keyed
    on the path stay right) with ``<name>.json`` beside it saying where it came from."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".teacher-repaired.tmp.pt"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:12]
    path = tmp.rename(out / f"teacher-repaired-{digest}.pt")
    path.with_suffix(".json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    return path


def provenance(report: AuditReport, repair: RepairSet, cfg: RepairConfig, source: str) -> dict[str, Any]:
    return {"repaired_from": source, "teacher": report.teacher, "oracle": report.oracle,
            "oracle_stand_in": report.oracle_stand_in, "suspected": [report.classes[s] for s in report.suspected],
            "trigger_box": report.trigger_box, "repair_set": repair.counts, "repair_size": len(repair.labels),
            "probe_size": report.probe_size, "config": asdict(cfg)}
