"""Run a suite's grid through the real ServerApp and ClientApp (the in-process engine), resumably.

Each run's folder is named by its row and config hash: a folder whose ``result.json`` says
``completed`` for the same hash is skipped, so an interrupted ``clipfed bench`` picks up where it
stopped. An unfinished folder is never overwritten: it is moved aside and, if it has a checkpoint,
the new run resumes from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clipfed.bench.suites import Suite
from clipfed.checkpoint import CHECKPOINT_FILE
from clipfed.config import RunConfig
from clipfed.inprocess import run_inprocess
from clipfed.results import RESULT_FILE


@dataclass(frozen=True)
class Cell:
    """One run of the grid; ``row`` is what the table calls it (a defense or a control)."""

    setting: str
    row: str
    attack: str
    seed: int
    overrides: dict[str, Any]
    pretrain: bool = False

    def config(self, suite: Suite, out: Path, init_model: str = "") -> RunConfig:
        values = {**suite.base, **suite.settings[self.setting], "seed": self.seed, "attack": self.attack,
                  **self.overrides, "out-dir": str(out / "runs")}
        if init_model and not self.pretrain:
            values["init-model"] = init_model
        cfg = RunConfig.from_flower(values)
        return cfg.model_copy(update={"run_name": f"{self.name}-{cfg.config_hash()[:8]}"})

    @property
    def name(self) -> str:
        return f"{self.setting}--{self.row}--{self.attack}--s{self.seed}"


def plan(suite: Suite, defenses: Iterable[str] | None = None, attacks: Iterable[str] | None = None,
         seeds: Iterable[int] | None = None) -> list[Cell]:
    """Pretraining first, then per setting/seed/attack: the controls, the defenses, the variants."""
    defenses = tuple(defenses or suite.defenses)
    attacks = tuple(attacks or suite.attacks)
    seeds = tuple(seeds if seeds is not None else suite.seeds)
    cells: list[Cell] = []
    for setting in suite.settings:
        for seed in seeds:
            cells.append(Cell(setting, "pretrain", "none", seed, {
                "defense": "fedavg", "num-malicious": 0, "num-server-rounds": suite.pretrain_rounds}, True))
            for attack in attacks:
                cells.append(Cell(setting, "fedavg-no-attack", attack, seed, {"defense": "fedavg", "num-malicious": 0}))
                cells.append(Cell(setting, "teacher-only", attack, seed, {"defense": "teacher-only"}))
                cells += [Cell(setting, d, attack, seed, {"defense": d}) for d in defenses]
                cells += [Cell(setting, name, attack, seed, keys) for name, keys in suite.variants.items()]
    return cells


def finished(run_dir: Path, cfg: RunConfig) -> bool:
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return result.get("status") == "completed" and result.get("config_hash") == cfg.config_hash()


def _set_aside(run_dir: Path) -> Path:
    """Move an unfinished run folder out of the way (kept, never deleted)."""
    for n in range(1, 1000):
        target = run_dir.with_name(f"{run_dir.name}.interrupted-{n}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise RuntimeError(f"too many interrupted copies of {run_dir}")


def run_cell(cfg: RunConfig, threads: int) -> tuple[Path, bool]:
    """Run (or skip, or resume) one cell; returns its folder and whether it ran now."""
    run_dir = Path(cfg.out_dir) / cfg.run_name
    if finished(run_dir, cfg):
        return run_dir, False
    if run_dir.exists():
        aside = _set_aside(run_dir)
        if (aside / CHECKPOINT_FILE).exists():
            cfg = cfg.model_copy(update={"resume_from": str(aside)})
    run_inprocess(cfg, threads=threads)
    return run_dir, True


def run_suite(suite: Suite, out: Path, cells: list[Cell], threads: int = 2) -> Iterator[tuple[Cell, Path]]:
    """Run every cell, pretraining first; a progress bar counts rounds run (ETA from their rate)."""
    out.mkdir(parents=True, exist_ok=True)
    pretrained: dict[tuple[str, int], str] = {}
    total = sum((suite.pretrain_rounds if c.pretrain else suite.base["num-server-rounds"]) for c in cells)
    with tqdm(total=total, unit="round", desc=f"bench {suite.name}", dynamic_ncols=True) as bar:
        for cell in cells:
            cfg = cell.config(suite, out, pretrained.get((cell.setting, cell.seed), ""))
            bar.set_postfix_str(cell.name)
            started = time.perf_counter()
            run_dir, ran = run_cell(cfg, threads)
            if cell.pretrain:
                pretrained[(cell.setting, cell.seed)] = str(run_dir)
            if ran:
                bar.update(cfg.num_server_rounds)
                tqdm.write(f"[bench] {cell.name}: {time.perf_counter() - started:.0f} s -> {run_dir.name}")
            else:  # skipped: a finished run of the same config; keep the ETA about real work
                bar.total -= cfg.num_server_rounds
                bar.refresh()
            yield cell, run_dir
