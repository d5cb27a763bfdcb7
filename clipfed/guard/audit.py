"""Auditing a teacher for a backdoor with a segmentation oracle (METHOD.md part 5; arXiv 2511.13545).

For each probe image:
1. the teacher's top-k labels over the vocabulary (zero-shot);
2. the oracle tries to ground each of them and returns its best region;
3. the grounded region is cropped and fed back to the teacher (how often it then says the
   grounded label is reported as ``crop_agreement``);
4. the rule (ours): the image is a *victim sample* for label t when the teacher's top-1 is t,
   the oracle cannot ground t (score below ``ground_threshold``) but grounds another label g,
   and masking one small window (2 or 3 cells square) lowers the teacher's p(t) by at least ``flip_drop``:
   a small region alone carries the claim, which is what a trigger is. (With 32-px images and
   the stand-in oracle, crop agreement alone was too noisy to decide: measured on the guard
   demo, recall 0.22 and precision 0.58 against 0.80 and 1.00 with the masking rule.)

Over the probe set, each label's victim count is compared with the others (a robust z-score):
a clean teacher's mistakes spread over labels, a backdoor concentrates them on its target.
The trigger is localised from the same masking: the smallest window whose masking lowers p(t)
over the victims of the top label (almost) as much as any.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clipfed.guard.oracle import Box, Grounding, Oracle, crop_resize
from clipfed.training import to_tensor

Classify = Callable[[torch.Tensor], torch.Tensor]  # float images (N, 3, H, W) -> logits (N, C)


@dataclass
class AuditConfig:
    top_k: int = 10  # the teacher's labels the oracle is asked to ground (CIFAR: the whole vocabulary)
    ground_threshold: float = 0.3  # the oracle's score below which a label is "not grounded"
    flip_drop: float = 0.7  # masking one small window must lower p(claim) by this much
    z_threshold: float = 3.0  # a label whose victim count is this many MADs above the median ...
    min_victims: int = 5  # ... and that has at least this many victims
    min_victim_share: float = 0.005  # ... or this share of the probe set, whichever is larger
    cell: int = 4  # occlusion windows of 2 and 3 cells, slid by one cell
    batch_size: int = 512


@dataclass
class AuditReport:
    classes: list[str]
    probe_size: int
    victim_counts: list[int]
    scores: list[float]  # robust z of each label's victim count
    ranking: list[int]  # labels by score, highest first
    suspected: list[int]  # labels whose score passes z_threshold
    victims: dict[int, list[int]]  # label -> probe indices of its victim samples
    grounded_label: dict[int, int]  # victim index -> the label the oracle grounded in it
    trigger_heatmap: list[list[float]]  # for the top label: mean drop of p(target) per occluded cell
    trigger_box: Box | None  # the smallest masking window that removes the top label's claim
    oracle: str
    oracle_stand_in: bool
    teacher: str
    config: dict[str, Any] = field(default_factory=dict)
    candidates: int = 0  # images where the oracle grounds another label than the teacher's claim
    crop_agreement: float = 0.0  # of those, how often the teacher on the grounded crop says that label

    @property
    def top(self) -> int:
        return self.ranking[0]

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["victims"] = {str(k): v for k, v in self.victims.items()}
        payload["grounded_label"] = {str(k): v for k, v in self.grounded_label.items()}
        return payload

    def summary(self) -> str:
        names = self.classes
        lines = [f"teacher: {self.teacher}", f"oracle: {self.oracle}"
                 + (" (offline stand-in)" if self.oracle_stand_in else ""),
                 f"probe images: {self.probe_size}",
                 "labels by backdoor score (victim samples, robust z):"]
        for label in self.ranking[:5]:
            lines.append(f"  {names[label]:>12}: {self.victim_counts[label]:5d} victims, z = {self.scores[label]:.1f}")
        verdict = (f"SUSPECTED backdoor target(s): {', '.join(names[s] for s in self.suspected)}"
                   if self.suspected else "no label passes the threshold: no backdoor suspected")
        lines.append(verdict)
        if self.trigger_box is not None:
            lines.append(f"candidate trigger region (top, left, bottom, right): {self.trigger_box}")
        return "\n".join(lines)


@torch.no_grad()
def _predict(classify: Classify, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([F.softmax(classify(x[i:i + batch_size]), dim=1) for i in range(0, len(x), batch_size)])


def robust_z(counts: np.ndarray) -> np.ndarray:
    median = float(np.median(counts))
    mad = float(np.median(np.abs(counts - median))) * 1.4826
    return (counts - median) / max(mad, 1.0)


def windows(height: int, width: int, cell: int) -> list[Box]:
    """Square windows of 2 and 3 cells slid by one cell, so that a trigger that straddles cell
    borders (or is as large as a 2-cell window) is still covered whole by some window."""
    return [(top, left, top + size, left + size) for size in (2 * cell, 3 * cell)
            for top in range(0, height - size + 1, cell) for left in range(0, width - size + 1, cell)]


@torch.no_grad()
def occlusion_drops(classify: Classify, x: torch.Tensor, claims: torch.Tensor, boxes: Sequence[Box],
                    batch_size: int) -> torch.Tensor:
    """(N, windows): how much p(claim) falls when each window is set to the image's mean colour."""
    base = _predict(classify, x, batch_size).gather(1, claims[:, None])
    fill = x.mean(dim=(2, 3), keepdim=True)
    drops = torch.empty(len(x), len(boxes))
    for i in range(len(x)):
        occluded = x[i:i + 1].repeat(len(boxes), 1, 1, 1)
        for j, (top, left, bottom, right) in enumerate(boxes):
            occluded[j, :, top:bottom, left:right] = fill[i]
        drops[i] = base[i] - _predict(classify, occluded, batch_size)[:, claims[i]]
    return drops


def heat_map(drops: torch.Tensor, boxes: Sequence[Box], height: int, width: int, cell: int) -> np.ndarray:
    """Per cell: the largest mean drop of any window covering it."""
    heat = np.zeros((height // cell, width // cell))
    for value, (top, left, bottom, right) in zip(drops.mean(dim=0).tolist(), boxes, strict=True):
        region = heat[top // cell:bottom // cell, left // cell:right // cell]
        np.maximum(region, value, out=region)
    return heat


def trigger_window(drops: torch.Tensor, boxes: Sequence[Box], share: float = 0.9) -> Box | None:
    """The smallest window whose masking lowers p(target) (mean over victims) within ``share``
    of the best: large windows that merely contain the trigger drop as much, so prefer small."""
    mean = drops.mean(dim=0)
    if len(mean) == 0 or float(mean.max()) <= 0:
        return None
    area = [(box[2] - box[0]) * (box[3] - box[1]) for box in boxes]
    candidates = [j for j in range(len(boxes)) if float(mean[j]) >= share * float(mean.max())]
    best = min(candidates, key=lambda j: (area[j], -float(mean[j])))
    return boxes[best]


def audit_teacher(classify: Classify, oracle: Oracle, images: np.ndarray, classes: Sequence[str],
                  cfg: AuditConfig | None = None, teacher_id: str = "") -> AuditReport:
    """Run the four steps over ``images`` (uint8 N x H x W x 3) and aggregate."""
    cfg = cfg or AuditConfig()
    x = to_tensor(np.asarray(images))
    probs = _predict(classify, x, cfg.batch_size)
    top_k = probs.topk(min(cfg.top_k, len(classes)), dim=1).indices  # step 1
    claimed = top_k[:, 0]
    groundings = oracle.ground(np.asarray(images), top_k.tolist(), classes)  # step 2

    # Candidates: the oracle cannot ground the teacher's claim but grounds another label.
    other_of: dict[int, Grounding] = {}
    for i, found in enumerate(groundings):
        claim = int(claimed[i])
        if any(g.label == claim and g.score >= cfg.ground_threshold for g in found):
            continue  # the oracle sees what the teacher claims: nothing to explain
        others = [g for g in found if g.label != claim and g.score >= cfg.ground_threshold]
        if others:
            other_of[i] = max(others, key=lambda g: g.score)
    order = sorted(other_of)
    victims: dict[int, list[int]] = {c: [] for c in range(len(classes))}
    grounded_label: dict[int, int] = {}
    crop_agreement = 0.0
    boxes = windows(x.shape[2], x.shape[3], cfg.cell)
    drops = torch.zeros(0, len(boxes))
    if order:
        # Step 3: the teacher on the grounded region (recorded: how often it sees the grounded label).
        crops = torch.cat([crop_resize(x[i:i + 1], [other_of[i].box], x.shape[2]) for i in order])
        on_crop = _predict(classify, crops, cfg.batch_size).argmax(dim=1)
        crop_agreement = float((on_crop == torch.tensor([other_of[i].label for i in order])).double().mean())
        # Step 4 (ours): a trigger is a *small* region that alone carries the claim: masking one
        # window makes p(claim) fall by at least flip_drop.
        drops = occlusion_drops(classify, x[order], claimed[order], boxes, cfg.batch_size)
        for i, drop in zip(order, drops.max(dim=1).values.tolist(), strict=True):
            if drop >= cfg.flip_drop:
                victims[int(claimed[i])].append(i)
                grounded_label[i] = other_of[i].label

    counts = np.array([len(victims[c]) for c in range(len(classes))])
    scores = robust_z(counts.astype(float))
    ranking = [int(c) for c in np.argsort(-scores, kind="stable")]
    min_victims = max(cfg.min_victims, int(np.ceil(cfg.min_victim_share * len(images))))
    suspected = [c for c in ranking if scores[c] >= cfg.z_threshold and counts[c] >= min_victims]
    heat, box = np.zeros((x.shape[2] // cfg.cell, x.shape[3] // cfg.cell)), None
    row_of = {index: row for row, index in enumerate(order)}
    top_rows = [row_of[i] for i in victims[ranking[0]]]
    if top_rows:  # the trigger: where masking hurts the top label's victims most
        heat = heat_map(drops[top_rows], boxes, x.shape[2], x.shape[3], cfg.cell)
        box = trigger_window(drops[top_rows], boxes)
    return AuditReport(
        classes=list(classes), probe_size=len(images), victim_counts=counts.tolist(),
        scores=[round(float(s), 3) for s in scores], ranking=ranking, suspected=suspected,
        victims={c: v for c, v in victims.items() if v}, grounded_label=grounded_label,
        trigger_heatmap=[[round(float(v), 4) for v in row] for row in heat], trigger_box=box,
        oracle=oracle.name, oracle_stand_in=oracle.is_stand_in, teacher=teacher_id, config=asdict(cfg),
        candidates=len(order), crop_agreement=round(crop_agreement, 4),
    )


def write_audit(report: AuditReport, images: np.ndarray, out: Path, examples: int = 8) -> Path:
    """``audit.json``, ``audit.txt`` and ``examples.png`` (victims with the trigger box drawn)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out / "audit.txt").write_text(report.summary() + "\n")
    shown = report.victims.get(report.top, [])[:examples]
    if shown:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        fig, axes = plt.subplots(1, len(shown) + 1, figsize=(2 * (len(shown) + 1), 2.4))
        for ax, index in zip(axes[:-1], shown, strict=True):
            ax.imshow(images[index])
            if report.trigger_box is not None:
                top, left, bottom, right = report.trigger_box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                       fill=False, edgecolor="red", linewidth=1.5))
            ax.set_title(f"#{index}", fontsize=8)
            ax.axis("off")
        axes[-1].imshow(np.asarray(report.trigger_heatmap), cmap="hot")
        axes[-1].set_title("occlusion drop", fontsize=8)
        axes[-1].axis("off")
        fig.suptitle(f"victim samples of '{report.classes[report.top]}' and the candidate trigger", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "examples.png", dpi=110)
        plt.close(fig)
    return out / "audit.json"
