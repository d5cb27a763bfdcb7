"""Run a suite's grid through the real ServerApp and ClientApp (the in-process engine), resumably.

Each run's folder is named by its row and config hash: a folder whose ``result.json`` says
``completed`` for the same hash is skipped, so an interrupted ``clipfed bench`` picks up where it
stopped. An unfinished folder is never overwritten: it is moved aside and, if it has a checkpoint,
the new run resumes from it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from clipfed import __version__
from clipfed.attacks import list_attacks
from clipfed.bench.suites import Plateau, Suite, control_of
from clipfed.checks import SERVER_DATA_KEYS, load_run_config, unread_keys
from clipfed.config import ConfigError, RunConfig, default_of
from clipfed.data import malicious_clients
from clipfed.defense.sampler import draw
from clipfed.engines.inprocess import run_inprocess
from clipfed.engines.launch import interruptible
from clipfed.errors import UserError
from clipfed.runs.checkpoint import CHECKPOINT_FILE, load_resume
from clipfed.runs.results import RESULT_FILE, load_result

T = TypeVar("T")


@dataclass(frozen=True)
class Cell:
    """One run of the grid; ``row`` is what the table calls it (a defense or a control)."""

    setting: str
    row: str
    attack: str
    seed: int
    overrides: dict[str, Any]
    pretrain: bool = False
    run_label: str = ""  # the attack its run folder is named by, where not ``attack`` (a shared control)

    def config(self, suite: Suite, out: Path, init_model: str = "") -> RunConfig:
        values = self._values(suite, out, init_model)
        return named(load_run_config({**values, **self._read_overrides(suite, values)}), self.name)

    def read_overrides(self, suite: Suite, out: Path) -> set[str]:
        """The suite's `-c` keys this cell reads, so that ``config`` sets them."""
        return set(self._read_overrides(suite, self._values(suite, out, "")))

    def _values(self, suite: Suite, out: Path, init_model: str) -> dict[str, Any]:
        window = suite.window.keys() if suite.window is not None and not self.pretrain else {}
        values = {**suite.base, **suite.settings[self.setting], "seed": self.seed, "attack": self.attack,
                  **window, **self.overrides, "out-dir": str(out / "runs")}
        if init_model and not self.pretrain:
            values["init-model"] = init_model
        return values

    @staticmethod
    def _read_overrides(suite: Suite, values: dict[str, Any]) -> dict[str, Any]:
        """The user's keys where the cell reads them: elsewhere they would change nothing but the
        config hash, and so rerun a control or a warm start for nothing."""
        if not suite.overrides:
            return {}
        unread = unread_keys(load_run_config({**values, **suite.overrides}))
        return {key: value for key, value in suite.overrides.items() if key not in unread}

    @property
    def name(self) -> str:
        return f"{self.setting}--{self.row}--{self.run_label or self.attack}--s{self.seed}"

    def warm_key(self, suite: Suite) -> tuple[str, int | None]:
        """Which warm start this cell uses (or, for a pretraining cell, is)."""
        return self.setting, self.seed if suite.pretrain_per_seed else None


def grid_keys(suite: Suite, cells: Iterable[Cell]) -> set[str]:
    """The run-config keys the grid sets per cell (a setting, a column, a row, the warm start, the
    window, the seed, where runs go): `clipfed bench -c` may not set them (``--settings``,
    ``--attacks``, ``--defenses``, ``--seeds`` and ``--out-dir`` choose them)."""
    keys = {"seed", "attack", "out-dir", "run-name", "init-model", "resume-from"}
    keys |= {key for setting in suite.settings.values() for key in setting}
    keys |= set(suite.window.keys()) if suite.window is not None else set()
    keys |= {key for budget in suite.budgets.values() for key in budget}  # --budget chooses them
    return keys | {key for cell in cells for key in cell.overrides}


def override_problems(suite: Suite, cells: list[Cell], out: Path) -> list[str]:
    """What is wrong with the suite's `-c` keys for this plan: a key the grid sets per cell, or one
    that no cell of the plan reads (it would change nothing)."""
    fixed = sorted(set(suite.overrides) & grid_keys(suite, cells))
    problems = [f"{key}: set by the suite's grid per cell; allowed: a key it does not set (choose settings, "
                "attacks, defenses, seeds, the attackers' budget and the output folder with --settings, --attacks, "
                "--defenses, --seeds, --budget, --out-dir)" for key in fixed]
    if problems:
        return problems
    read: set[str] = set()
    for cell in cells:
        try:
            read |= cell.read_overrides(suite, out)
        except ConfigError as err:  # e.g. a strong-teacher variant's teacher-pool beside teacher='openclip'
            problems += [f"in the row {cell.row!r}: {problem}; leave the row out (--variants, --defenses) or "
                         "the key" for problem in err.problems]
    if problems:
        return list(dict.fromkeys(problems))  # once per row, not per cell
    return [f"{key}={suite.overrides[key]!r}: no run of this plan reads it (it would change nothing); allowed: "
            "a key the planned attacks and defenses read" for key in suite.overrides if key not in read]


def named(cfg: RunConfig, prefix: str) -> RunConfig:
    """``cfg`` with its run folder named by ``prefix`` and its config hash (a finished run of the
    same config is found again by its name)."""
    return cfg.model_copy(update={"run_name": f"{prefix}-{cfg.config_hash()[:8]}"})


def _attack_of(suite: Suite, column: str) -> str:
    variant = suite.attack_variants.get(column)
    return str(variant.keys.get("attack", column)) if variant is not None else column


def _budget(suite: Suite, budget: str | None) -> dict[str, Any]:
    """The attackers' run-config keys of ``budget`` (default: the suite's first), {} for a suite
    without budgets; ``UserError`` naming the allowed ones."""
    if not suite.budgets:
        if budget:
            raise UserError(f"--budget {budget}: suite {suite.name!r} has no attacker budgets")
        return {}
    name = budget or next(iter(suite.budgets))
    if name not in suite.budgets:
        raise UserError(f"--budget {name}: unknown for suite {suite.name!r}; allowed: {', '.join(suite.budgets)}")
    return suite.budgets[name]


def single_shot_round(values: dict[str, Any], attackers: int, last: int) -> int:
    """The first round in 1..``last`` whose seeded sample holds exactly ``attackers`` of the
    config's malicious clients (sampling and roles are pure functions of the seed, so this is the
    round the run will sample them in); ``UserError`` if none does."""
    cfg = load_run_config(values)
    malicious = malicious_clients(cfg)
    for server_round in range(1, last + 1):
        if len(malicious.intersection(draw(cfg.seed, server_round, list(range(cfg.num_clients)),
                                           cfg.clients_per_round))) == attackers:
            return server_round
    raise UserError(f"seed {cfg.seed}: no round of 1..{last} samples exactly {attackers} of the "
                    f"{cfg.num_malicious} malicious clients; raise num-malicious or the window")


def plan(suite: Suite, defenses: Iterable[str] | None = None, attacks: Iterable[str] | None = None,
         seeds: Iterable[int] | None = None, settings: Iterable[str] | None = None,
         budget: str | None = None, variants: Iterable[str] | None = None) -> list[Cell]:
    """The warm-start pretrainings first (one per setting, as the field keeps one clean checkpoint
    per dataset, or per setting and seed), then seed by seed (so a suite stopped early has whole
    seeds), per setting and attack column: the controls, the defenses, the variants. Attackers
    get ``budget``'s keys (FedAvg without attack has none, so every budget shares it).
    ``variants``: the suite's variant rows to run (None: all of them; empty: none).

    Raises:
        UserError: an attack no registry declares (yet), an unknown budget or variant, or a
            single-shot column whose round cannot be found: before anything runs, not late in the
            suite.
    """
    variants = tuple(suite.variants if variants is None else variants)
    if unknown_variants := [v for v in variants if v not in suite.variants]:
        raise UserError(f"--variants: {', '.join(unknown_variants)} not a variant of suite {suite.name!r}; "
                        f"allowed: {', '.join(suite.variants) or 'none (it has no variant rows)'}, or none")
    defenses = tuple(defenses or suite.defenses)
    attacks = tuple(attacks or suite.attacks)
    seeds = tuple(seeds if seeds is not None else suite.seeds)
    settings = tuple(settings or suite.settings)
    if unknown := [a for a in attacks if _attack_of(suite, a) not in list_attacks()]:
        registered = [a for a in attacks if a not in unknown]
        raise UserError(f"suite {suite.name!r}: attack(s) {', '.join(unknown)} not registered (not in "
                        f"`clipfed list`: {', '.join(list_attacks())}); run the others with --attacks "
                        f"{','.join(registered) or '<registered names>'}, or add the attack first")
    attacker_keys = _budget(suite, budget)
    pretrain = {"defense": "fedavg", "num-malicious": 0, "num-server-rounds": suite.pretrain_rounds,
                **suite.pretrain_keys}
    cells = [Cell(setting, "pretrain", "none", seed, pretrain, True) for setting in settings
             for seed in (seeds if suite.pretrain_per_seed else suite.seeds[:1])]
    for seed in seeds:
        for setting in settings:
            for attack in attacks:
                column = suite.attack_variants.get(attack)
                keys = dict(column.keys) if column is not None else {}
                if column is not None and column.single_shot:
                    assert suite.window is not None, "a single-shot column needs the suite's window"
                    values = {**suite.base, **suite.overrides, **suite.settings[setting], "seed": seed, **keys}
                    shot = single_shot_round(values, column.single_shot, suite.window.attack_rounds)
                    keys |= suite.window.keys(first=shot, last=shot)
                attacked = {**keys, **suite.budget_for(attacker_keys, setting)}
                label, control = control_of(attack, keys)
                shared = "" if label == attack else label
                # no client trains, so the attackers' keys change nothing; they stay so that the config
                # (and its hash) is the one teacher-only runs have always been made with
                teacher_alone = {**control, **attacker_keys}
                cells.append(Cell(setting, "fedavg-no-attack", attack, seed,
                                  {**control, "defense": "fedavg", "num-malicious": 0}, run_label=shared))
                cells.append(Cell(setting, "teacher-only", attack, seed, {**teacher_alone, "defense": "teacher-only"},
                                  run_label=shared))
                cells += [Cell(setting, d, attack, seed, {**attacked, "defense": d}) for d in defenses]
                for name in variants:
                    alone = suite.variants[name].get("defense") == "teacher-only"
                    cells.append(Cell(setting, name, attack, seed,
                                      {**(teacher_alone if alone else attacked), **suite.variants[name]},
                                      run_label=shared if alone else ""))
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


def _same_cell(recorded: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str]) -> bool:
    """Whether a run's recorded config agrees with the cell's on ``keys`` (a key the run does not
    record, added since, is at its default)."""
    return all(recorded.get(key, default_of(key)) == wanted[key] for key in keys)


def existing_runs(suite: Suite, cells: list[Cell], out: Path) -> tuple[list[tuple[Cell, Path]], list[Cell]]:
    """The run folders already in ``out`` for ``cells``, finished or not, without running anything
    (a long suite's partial results), and the cells that have none yet. A cell's folder is
    ``<cell name>-<config hash>`` with a ``result.json`` whose teacher and `-c` keys are the cell's
    (a run with another teacher in the same folder is not this cell's; the rest of the config is
    not compared, as runs of earlier versions record keys since changed, such as
    ``eval-batch-size``); of several (a warm start trained on chunk by chunk, or runs of an earlier
    config), the one with the most rounds, then the newest."""
    folders = [d for d in (out / "runs").iterdir() if (d / RESULT_FILE).is_file()] if (out / "runs").is_dir() else []
    found, missing = [], []
    for cell in cells:
        pattern = re.compile(re.escape(cell.name) + r"-[0-9a-f]{8}")
        # the teacher and the user's -c keys: a run made with another teacher in the same folder is not this cell's
        keys, wanted = {*SERVER_DATA_KEYS, *cell.read_overrides(suite, out)}, cell.config(suite, out).to_flower()
        by_name = [(d, load_result(d)) for d in folders if pattern.fullmatch(d.name)]
        candidates = [(d, result) for d, result in by_name if _same_cell(result["config"], wanted, keys)]
        if not candidates:
            missing.append(cell)
            continue
        best, _ = max(candidates, key=lambda c: (len(c[1]["rounds"]), (c[0] / RESULT_FILE).stat().st_mtime))
        found.append((cell, best))
    return found, missing


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


def run_pretrain(cfg: RunConfig, plateau: Plateau | None, threads: int) -> tuple[Path, bool, float]:
    """Run (or find) a warm start; with a ``plateau``, resume it chunk by chunk (each chunk its own
    run folder, named by its config, so a finished chunk is found again) until MA stops rising."""
    prefix = cfg.run_name.rsplit("-", 1)[0]
    run_dir, ran, seconds = run_cell(cfg, threads)
    while plateau is not None:
        mas = [e["ma"] for e in load_result(run_dir)["rounds"] if e["round"] >= 1]
        total = plateau.next_rounds(mas)
        if total is None:
            break
        longer = named(cfg.model_copy(update={"num_server_rounds": total, "resume_from": str(run_dir)}), prefix)
        run_dir, ran_now, more = run_cell(longer, threads)
        ran, seconds = ran or ran_now, seconds + more
    return run_dir, ran, seconds


def prepare_server_data(cfg: RunConfig, threads: int) -> float:
    """Build (or find cached) the server dataset and teacher outputs that ``cfg``'s runs load, so
    that parallel runs of one setting and seed never build the same one at once; its seconds."""
    import torch

    from clipfed.data_synth.provider import obtain_server_dataset, synth_config_for

    torch.set_num_threads(threads)
    started = time.perf_counter()
    obtain_server_dataset(synth_config_for(cfg), cfg.synth_url)
    return time.perf_counter() - started


def _server_data_cells(suite: Suite, out: Path, cells: list[Cell]) -> list[int]:
    """One cell per server dataset recipe (setting, seed and teacher) that a defense needs."""
    from clipfed.data_synth.provider import synth_config_for
    from clipfed.defense import DEFENSES

    first: dict[str, int] = {}
    for i, cell in enumerate(cells):
        if not cell.pretrain and DEFENSES.get(cell.overrides.get("defense", "fedavg")).needs_server_data:
            first.setdefault(synth_config_for(cell.config(suite, out)).recipe_hash(), i)
    return list(first.values())


def _in_worker(task: Callable[..., T], *args: Any) -> T:
    """Run a bench task in a pool worker. A run stopped by a signal has recorded `interrupted` by
    the time it raises here; the worker then exits instead of taking up a run queued before the
    stop (a pool queues one more than it runs, beyond the reach of ``cancel_futures``)."""
    try:
        return task(*args)
    except KeyboardInterrupt as stop:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:  # a closed terminal (SIGHUP) makes flushing fail; the worker must exit all the same
            os._exit(128 + int(getattr(stop, "signum", signal.SIGINT)))


def _stop_workers(pool: ProcessPoolExecutor, grace: float = 60.0) -> None:
    """Stop a bench's workers: SIGTERM (a run under way records `interrupted`, then its worker exits),
    SIGKILL for one still alive ``grace`` s later (stuck in a long native call), then shut the pool
    down, cancelling what has not started. The bench holds further signals meanwhile (one stop at a
    time, ``interruptible``), so this is what bounds how long stopping takes."""
    workers = list((pool._processes or {}).values())  # the pool's own, not every child of this process
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + grace
    for worker in workers:
        worker.join(max(deadline - time.monotonic(), 0.0))
        if worker.is_alive():
            worker.kill()
            worker.join()
    pool.shutdown(wait=True, cancel_futures=True)


def run_suite(suite: Suite, out: Path, cells: list[Cell], threads: int = 2,
              workers: int = 1) -> list[tuple[Cell, Path]]:
    """Run every cell in ``workers`` processes of ``threads`` torch threads each (small models run
    faster as parallel single-threaded runs than as one multi-threaded one), the pretraining before
    the cells it warm-starts and alongside it each server dataset (per setting, seed and teacher); cells
    of one config (a control shared by columns, ``control_of``) run once; returns (cell, run folder)
    in plan order. A progress bar counts rounds run, so its ETA comes from real
    work; finished runs are skipped and leave the total. A failed run (its exception) is reported
    and the suite goes on: its ``result.json`` says ``failed`` (or it has none) and the tables
    mark its row; a failed warm start stops the suite, as every run after it would start from it."""
    out.mkdir(parents=True, exist_ok=True)
    run_dirs: dict[int, Path] = {}
    warm: dict[tuple[str, int | None], str] = {}
    total = sum(c.config(suite, out).num_server_rounds for c in cells)
    phases = [[i for i, c in enumerate(cells) if c.pretrain], [i for i, c in enumerate(cells) if not c.pretrain]]

    def run_phases(pool: ProcessPoolExecutor, bar: tqdm) -> None:
        nonlocal warm
        for number, phase in enumerate(phases):
            configs = {i: cells[i].config(suite, out, warm.get(cells[i].warm_key(suite), "")) for i in phase}
            first: dict[str, int] = {}  # run name -> the first cell of the phase with it: a shared control runs once
            for i in phase:
                first.setdefault(configs[i].run_name, i)
            shared = {i: first[configs[i].run_name] for i in phase if first[configs[i].run_name] != i}
            bar.total -= sum(configs[i].num_server_rounds for i in shared)
            futures = {(pool.submit(_in_worker, run_pretrain, configs[i], suite.plateau, threads) if cells[i].pretrain
                        else pool.submit(_in_worker, run_cell, configs[i], threads)): i
                       for i in phase if i not in shared}
            prepared = {pool.submit(_in_worker, prepare_server_data, cells[i].config(suite, out), threads):
                        cells[i].name for i in (_server_data_cells(suite, out, cells) if number == 0 else [])}
            try:
                pending: list[Future[Any]] = [*futures, *prepared]
                for future in as_completed(pending):
                    if future in prepared:  # nothing to count, but its failure stops the suite
                        tqdm.write(f"[bench] server data for {prepared[future]}: {future.result():.0f} s")
                        continue
                    i = futures[future]
                    rounds = configs[i].num_server_rounds
                    try:
                        run_dirs[i], ran, seconds = future.result()
                    except BrokenExecutor:
                        raise
                    except Exception as err:  # any failure of one run is that row's result
                        if cells[i].pretrain:
                            raise
                        run_dirs[i] = Path(configs[i].out_dir) / configs[i].run_name
                        bar.total -= rounds
                        tqdm.write(f"[bench] {cells[i].name}: FAILED ({type(err).__name__}: {err}); "
                                   "its row is marked failed, the suite goes on")
                        continue
                    if cells[i].pretrain:  # a warm start trained to a plateau may have run longer
                        rounds_now = len(load_result(run_dirs[i])["rounds"]) - 1
                        bar.total += rounds_now - rounds
                        rounds = rounds_now
                    if ran:
                        bar.update(rounds)
                        tqdm.write(f"[bench] {cells[i].name}: {seconds:.0f} s -> {run_dirs[i].name}")
                    else:  # a finished run of the same config: keep the ETA about real work
                        bar.total -= rounds
                        bar.refresh()
            except Exception:
                pool.shutdown(wait=True, cancel_futures=True)  # runs under way finish; none start
                raise
            run_dirs.update({i: run_dirs[j] for i, j in shared.items()})
            warm = {cells[i].warm_key(suite): str(run_dirs[i]) for i in phases[0]}

    # SIGTERM and SIGHUP stop the suite as Ctrl-C does, wherever they arrive: no run starts, each
    # worker's run records `interrupted` (run_inprocess) and the workers exit (_stop_workers).
    with (interruptible(),
          tqdm(total=total, unit="round", desc=f"bench {suite.name}", dynamic_ncols=True) as bar,
          ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool):
        try:
            run_phases(pool, bar)
        except KeyboardInterrupt:
            _stop_workers(pool)
            raise
    return [(cell, run_dirs[i]) for i, cell in enumerate(cells)]
