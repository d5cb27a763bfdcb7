"""Run a suite's grid through the real ServerApp and ClientApp (the in-process engine), resumably.

Each run's folder is named by its row and config hash: a folder whose ``result.json`` says
``completed`` for the same hash is skipped, so an interrupted ``clipfed bench`` picks up where it
stopped. An unfinished folder is never overwritten: it is moved aside and, if it has a checkpoint,
the new run resumes from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clipfed import __version__
from clipfed.bench.suites import Suite
from clipfed.checks import load_run_config
from clipfed.config import ConfigError, RunConfig
from clipfed.engines.inprocess import run_inprocess
from clipfed.runs.checkpoint import CHECKPOINT_FILE, load_resume
from clipfed.runs.results import RESULT_FILE


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
        cfg = load_run_config(values)
        return cfg.model_copy(update={"run_name": f"{self.name}-{cfg.config_hash()[:8]}"})

    @property
    def name(self) -> str:
        return f"{self.setting}--{self.row}--{self.attack}--s{self.seed}"


def plan(suite: Suite, defenses: Iterable[str] | None = None, attacks: Iterable[str] | None = None,
         seeds: Iterable[int] | None = None, settings: Iterable[str] | None = None) -> list[Cell]:
    """One warm-start pretraining per setting first (as the field keeps one clean checkpoint per
    dataset), then seed by seed (so a suite stopped early has whole seeds), per setting and
    attack: the controls, the defenses, the variants."""
    defenses = tuple(defenses or suite.defenses)
    attacks = tuple(attacks or suite.attacks)
    seeds = tuple(seeds if seeds is not None else suite.seeds)
    settings = tuple(settings or suite.settings)
    cells = [Cell(setting, "pretrain", "none", suite.seeds[0], {
        "defense": "fedavg", "num-malicious": 0, "num-server-rounds": suite.pretrain_rounds,
        **suite.pretrain_keys}, True) for setting in settings]
    for seed in seeds:
        for setting in settings:
            for attack in attacks:
                cells.append(Cell(setting, "fedavg-no-attack", attack, seed, {"defense": "fedavg", "num-malicious": 0}))
                cells.append(Cell(setting, "teacher-only", attack, seed, {"defense": "teacher-only"}))
                cells += [Cell(setting, d, attack, seed, {"defense": d}) for d in defenses]
                cells += [Cell(setting, name, attack, seed, keys) for name, keys in suite.variants.items()]
    return cells


def finished(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir`` holds a completed run of ``cfg`` made by this clipfed version: a release
    that changes what a config computes (a trigger's shape, an ASR rule) bumps ``__version__``,
    so a suite never reuses numbers the current code would not give."""
    try:
        result = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (result.get("status") == "completed" and result.get("config_hash") == cfg.config_hash()
            and result.get("versions", {}).get("clipfed") == __version__)


def _set_aside(run_dir: Path) -> Path:
    """Move an unfinished run folder out of the way (kept, never deleted)."""
    for n in range(1, 1000):
        target = run_dir.with_name(f"{run_dir.name}.interrupted-{n}")
        if not target.exists():
            run_dir.rename(target)
            return target
    raise RuntimeError(f"too many interrupted copies of {run_dir}")


def run_cell(cfg: RunConfig, threads: int) -> tuple[Path, bool, float]:
    """Run (or skip, or resume) one cell; returns its folder, whether it ran now and its seconds."""
    started = time.perf_counter()
    run_dir = Path(cfg.out_dir) / cfg.run_name
    if finished(run_dir, cfg):
        return run_dir, False, 0.0
    if run_dir.exists():
        aside = _set_aside(run_dir)
        if (aside / CHECKPOINT_FILE).exists():
            resumed = cfg.model_copy(update={"resume_from": str(aside)})
            try:  # a checkpoint of another config, or of the last round, cannot be resumed: run afresh
                load_resume(resumed)
                cfg = resumed
            except ConfigError as err:
                print(f"[bench] {run_dir.name}: not resuming {aside.name} ({'; '.join(err.problems)}); "
                      "running afresh", flush=True)
    run_inprocess(cfg, threads=threads)
    return run_dir, True, time.perf_counter() - started


def prepare_server_data(cfg: RunConfig, threads: int) -> float:
    """Build (or find cached) the server dataset and teacher outputs that ``cfg``'s runs load, so
    that parallel runs of one setting and seed never build the same one at once; its seconds."""
    import torch

    from clipfed.data_synth.provider import obtain_server_dataset, synth_config_for

    torch.set_num_threads(threads)
    started = time.perf_counter()
    obtain_server_dataset(synth_config_for(cfg), cfg.synth_url)
    return time.perf_counter() - started


def _server_data_cells(cells: list[Cell]) -> list[int]:
    """One cell per setting and seed whose defense needs the server dataset."""
    from clipfed.defense import DEFENSES

    first: dict[tuple[str, int], int] = {}
    for i, cell in enumerate(cells):
        if not cell.pretrain and DEFENSES.get(cell.overrides.get("defense", "fedavg")).needs_server_data:
            first.setdefault((cell.setting, cell.seed), i)
    return list(first.values())


def run_suite(suite: Suite, out: Path, cells: list[Cell], threads: int = 2,
              workers: int = 1) -> list[tuple[Cell, Path]]:
    """Run every cell in ``workers`` processes of ``threads`` torch threads each (small models run
    faster as parallel single-threaded runs than as one multi-threaded one), the pretraining before
    the cells it warm-starts and alongside it each setting and seed's server dataset; returns
    (cell, run folder) in plan order. A progress bar counts rounds run, so its ETA comes from real
    work; finished runs are skipped and leave the total."""
    out.mkdir(parents=True, exist_ok=True)
    run_dirs: dict[int, Path] = {}
    warm: dict[str, str] = {}
    total = sum((suite.pretrain_rounds if c.pretrain else suite.base["num-server-rounds"]) for c in cells)
    phases = [[i for i, c in enumerate(cells) if c.pretrain], [i for i, c in enumerate(cells) if not c.pretrain]]
    with (tqdm(total=total, unit="round", desc=f"bench {suite.name}", dynamic_ncols=True) as bar,
          ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool):
        for number, phase in enumerate(phases):
            configs = {i: cells[i].config(suite, out, warm.get(cells[i].setting, "")) for i in phase}
            futures = {pool.submit(run_cell, configs[i], threads): i for i in phase}
            prepared = {pool.submit(prepare_server_data, cells[i].config(suite, out), threads): cells[i].name
                        for i in (_server_data_cells(cells) if number == 0 else [])}
            try:
                pending: list[Future[Any]] = [*futures, *prepared]
                for future in as_completed(pending):
                    if future in prepared:  # nothing to count, but its failure stops the suite
                        tqdm.write(f"[bench] server data for {prepared[future]}: {future.result():.0f} s")
                        continue
                    i = futures[future]
                    run_dirs[i], ran, seconds = future.result()
                    rounds = configs[i].num_server_rounds
                    if ran:
                        bar.update(rounds)
                        tqdm.write(f"[bench] {cells[i].name}: {seconds:.0f} s -> {run_dirs[i].name}")
                    else:  # a finished run of the same config: keep the ETA about real work
                        bar.total -= rounds
                        bar.refresh()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # runs under way finish; none start
                raise
            warm = {cells[i].setting: str(run_dirs[i]) for i in phases[0]}
    return [(cell, run_dirs[i]) for i, cell in enumerate(cells)]
