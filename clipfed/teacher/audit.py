"""Auditing a teacher for a backdoor with a segmentation oracle (METHOD.md part 5; arXiv 2511.13545).

For each probe image:
1. the teacher's top-k labels over the vocabulary (zero-shot);
2. the oracle tries to ground each of them and returns its best region;
3. the grounded regions are cropped and fed back to the teacher;
4. the rule (ours): the image is a *victim sample* for label t when the teacher's top-1 is t,
   the oracle cannot ground t (score below ``ground_threshold``), the oracle grounds another
   label g, and the teacher, shown only a region where g is grounded, says g. The object is
   plainly g, so the evidence for t lies outside that region: a trigger.

Over the probe set, each label's victim count is compared with the others (a robust z-score):
a clean teacher's mistakes spread over labels, a backdoor concentrates them on its target.
The trigger is then localised on the victims of the top label by occlusion: the cells whose
masking most lowers the teacher's probability of t, outside the grounded region.
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

from clipfed.teacher.oracle import Box, Oracle, crop_resize
from clipfed.training import to_tensor

Classify = Callable[[torch.Tensor], torch.Tensor]  # float images (N, 3, H, W) -> logits (N, C)


@dataclass
class AuditConfig:
    top_k: int = 3
    ground_threshold: float = 0.5  # the oracle's score below which a label is "not grounded"
    z_threshold: float = 3.0  # a label whose victim count is this many MADs above the median is flagged
    cell: int = 4  # occlusion cell size in pixels, for trigger localisation
    max_localise: int = 64  # victims used for localisation
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
    trigger_box: Box | None  # the hottest cells' bounding box
    oracle: str
    oracle_stand_in: bool
    teacher: str
    config: dict[str, Any] = field(default_factory=dict)

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


@torch.no_grad()
def localise_trigger(classify: Classify, x: torch.Tensor, target: int, cell: int,
                     batch_size: int) -> np.ndarray:
    """Mean drop of p(target) when a ``2 cell`` square window, slid by ``cell``, is set to the
    image mean; a cell's heat is the largest drop of any window covering it. (Windows twice the
    cell size so that a trigger straddling cell borders is still covered whole.)"""
    n, _, height, width = x.shape
    window = 2 * cell
    tops = list(range(0, height - window + 1, cell))
    lefts = list(range(0, width - window + 1, cell))
    base = _predict(classify, x, batch_size)[:, target]
    fill = x.mean(dim=(2, 3), keepdim=True)
    heat = np.zeros((height // cell, width // cell))
    for top in tops:
        occluded = x.unsqueeze(0).repeat(len(lefts), 1, 1, 1, 1)
        for j, left in enumerate(lefts):
            occluded[j, :, :, top:top + window, left:left + window] = fill
        probs = _predict(classify, occluded.flatten(0, 1), batch_size)[:, target].view(len(lefts), n)
        drops = (base.unsqueeze(0) - probs).mean(dim=1).numpy()
        for j, left in enumerate(lefts):
            r, c = top // cell, left // cell
            heat[r:r + 2, c:c + 2] = np.maximum(heat[r:r + 2, c:c + 2], drops[j])
    return heat


def heat_box(heat: np.ndarray, cell: int, share: float = 0.9) -> Box | None:
    """The bounding box of the cells whose heat is within ``share`` of the peak."""
    if heat.max() <= 0:
        return None
    rows, cols = np.nonzero(heat >= heat.max() * share)
    return (int(rows.min()) * cell, int(cols.min()) * cell, (int(rows.max()) + 1) * cell, (int(cols.max()) + 1) * cell)


def audit_teacher(classify: Classify, oracle: Oracle, images: np.ndarray, classes: Sequence[str],
                  cfg: AuditConfig | None = None, teacher_id: str = "") -> AuditReport:
    """Run the four steps over ``images`` (uint8 N x H x W x 3) and aggregate."""
    cfg = cfg or AuditConfig()
    x = to_tensor(np.asarray(images))
    probs = _predict(classify, x, cfg.batch_size)
    top_k = probs.topk(min(cfg.top_k, len(classes)), dim=1).indices  # step 1
    claimed = top_k[:, 0]
    groundings = oracle.ground(np.asarray(images), top_k.tolist(), classes)  # step 2

    # Step 3: the teacher on the grounded regions of the best-grounded label other than its claim.
    regions_of: dict[int, tuple[int, list[Box]]] = {}
    for i, found in enumerate(groundings):
        claim = int(claimed[i])
        if any(g.label == claim and g.score >= cfg.ground_threshold for g in found):
            continue  # the oracle sees what the teacher claims: nothing to explain
        others = [g for g in found if g.label != claim and g.score >= cfg.ground_threshold]
        if others:
            best = max(others, key=lambda g: g.score)
            boxes = [box for box, score in best.regions if score >= cfg.ground_threshold] or [best.box]
            regions_of[i] = (best.label, boxes)
    victims: dict[int, list[int]] = {c: [] for c in range(len(classes))}
    grounded_label: dict[int, int] = {}
    if regions_of:
        order = sorted(regions_of)
        crops = torch.cat([crop_resize(x[i:i + 1], regions_of[i][1], x.shape[2]) for i in order])
        on_crops = _predict(classify, crops, cfg.batch_size).argmax(dim=1).split(
            [len(regions_of[i][1]) for i in order])
        for i, predicted in zip(order, on_crops, strict=True):
            label = regions_of[i][0]
            if bool((predicted == label).any()):  # step 4: some grounded region alone is that label
                victims[int(claimed[i])].append(i)
                grounded_label[i] = label

    counts = np.array([len(victims[c]) for c in range(len(classes))])
    scores = robust_z(counts.astype(float))
    ranking = [int(c) for c in np.argsort(-scores, kind="stable")]
    suspected = [c for c in ranking if scores[c] >= cfg.z_threshold and counts[c] > 0]
    heat, box = np.zeros((x.shape[2] // cfg.cell, x.shape[3] // cfg.cell)), None
    top_victims = victims[ranking[0]][: cfg.max_localise]
    if top_victims:
        heat = localise_trigger(classify, x[top_victims], ranking[0], cfg.cell, cfg.batch_size)
        box = heat_box(heat, cfg.cell)
    return AuditReport(
        classes=list(classes), probe_size=len(images), victim_counts=counts.tolist(),
        scores=[round(float(s), 3) for s in scores], ranking=ranking, suspected=suspected,
        victims={c: v for c, v in victims.items() if v}, grounded_label=grounded_label,
        trigger_heatmap=[[round(float(v), 4) for v in row] for row in heat], trigger_box=box,
        oracle=oracle.name, oracle_stand_in=oracle.is_stand_in, teacher=teacher_id, config=asdict(cfg),
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
