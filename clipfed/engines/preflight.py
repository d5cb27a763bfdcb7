"""Pre-flight: what would stop (or void) a run after Flower started, found before any process starts.

``clipfed.checks.load_run_config`` holds the rules on values and names, which the ServerApp and
every ClientApp apply again. These checks need the submitting machine: its files and folders (run folders, the teacher
checkpoint, the synthesis recipe, CIFAR-10), open_clip's model names, and how the run is launched
(SuperNodes per client, a defense that could never aggregate). Paths are checked as given, from the
current folder, as ``clipfed run`` resolves them.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clipfed.checks import load_run_config
from clipfed.config import HF_HUB, LOCAL_DIR, RANDOM_INIT, ConfigError, RunConfig, default_of
from clipfed.data.cifar import (
    DATA_DIR_ENV,
    NPZ_NAME,
    TORCHVISION_DIR,
    DataNotFoundError,
    _find_source,
    resolve_data_dir,
)

# Path keys -> what must be there (run folders are checked further once the config is valid).
FOLDER_KEYS = ("resume-from", "init-model")
FILE_KEYS = ("teacher-checkpoint", "teacher-guard-probe", "synth-config")


def _value(run_config: Mapping[str, Any], key: str) -> Any:
    return run_config[key] if key in run_config else default_of(key)


def _data_problem(run_config: Mapping[str, Any]) -> str | None:
    data_dir = _value(run_config, "data-dir") or os.environ.get(DATA_DIR_ENV, "")
    if not isinstance(data_dir, str):
        return None  # RunConfig names the type
    try:
        root = resolve_data_dir(data_dir)
    except DataNotFoundError as err:
        return f"data-dir: {err}"
    if _find_source(root) is None:
        return (f"data-dir={str(root)!r}: no CIFAR-10 there; allowed: a folder holding cifar10/{NPZ_NAME} "
                f"(the offline copy) or {TORCHVISION_DIR}/ (`clipfed download --data-dir DIR` when online)")
    return None


def teacher_problems(run_config: Mapping[str, Any]) -> list[str]:
    """``teacher-model`` (and ``teacher-pretrained``) must be names open_clip knows; open_clip is
    imported (seconds) only when the openclip teacher is chosen or the model name was changed."""
    model, pretrained = _value(run_config, "teacher-model"), _value(run_config, "teacher-pretrained")
    if not isinstance(model, str) or not isinstance(pretrained, str):
        return []
    if _value(run_config, "teacher") != "openclip" and model == default_of("teacher-model"):
        return []
    if model.startswith(HF_HUB):
        return []  # a Hugging Face repo: only a download can tell
    if model.startswith(LOCAL_DIR):
        folder = Path(model.removeprefix(LOCAL_DIR)).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            return [f"teacher-model={model!r}: " + ("no open_clip_config.json in that folder" if folder.is_dir()
                                                      else "no such folder")
                    + "; allowed: a folder as open_clip's push_to_hf_hub writes one (open_clip_config.json "
                      "and the weights)"]
        return []
    import open_clip

    known = open_clip.list_models()
    if model not in known:
        close = difflib.get_close_matches(model, known, n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return [(f"teacher-model={model!r} is not an open_clip model; {hint}allowed: a name of "
                 "open_clip.list_models(), hf-hub:ORG/REPO or local-dir:PATH")]
    tags = open_clip.list_pretrained_tags_by_model(model)
    if pretrained and pretrained not in (RANDOM_INIT, *tags) and not Path(pretrained).expanduser().is_file():
        return [(f"teacher-pretrained={pretrained!r} is neither a pretrained tag of {model} nor a file; "
                 f"allowed: {', '.join([*tags, RANDOM_INIT])}")]
    return []


def file_problems(run_config: Mapping[str, Any]) -> list[str]:
    """Missing files and folders, the data, open_clip names: ``"key=value: why; allowed: ..."``.

    Works on the raw mapping (defaults for absent keys), so these come out with RunConfig's own
    complaints even when other values are invalid."""
    problems = []
    for key in (*FOLDER_KEYS, *FILE_KEYS):
        value = _value(run_config, key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if key in FOLDER_KEYS and not path.is_dir():
            problems.append(f"{key}={value!r}: no such folder; allowed: the folder of an earlier run")
        elif key in FILE_KEYS and not path.is_file():
            problems.append(f"{key}={value!r}: no such file")
    if problem := _data_problem(run_config):
        problems.append(problem)
    return problems + teacher_problems(run_config)


def launch_problems(cfg: RunConfig, num_supernodes: int | None = None,
                    idle_defense_ok: bool = False) -> list[str]:
    """Problems of a valid config: SuperNodes vs clients, a defense that can never aggregate, and
    the run folders and recipe files read as the ServerApp would read them."""
    problems = []
    if num_supernodes is not None and num_supernodes != cfg.num_clients:
        problems.append(
            f"--num-supernodes={num_supernodes} does not match num-clients={cfg.num_clients}: each "
            f"SuperNode holds one partition (fewer: the server waits round-timeout={cfg.round_timeout:g} s "
            f"for the rest; more: the extra ones hold none); allowed: --num-supernodes {cfg.num_clients} "
            "(or leave it out)")
    if cfg.defense == "bulyan" and not idle_defense_ok:
        f_key, f = ("num-malicious", cfg.num_malicious) if cfg.krum_f < 0 else ("krum-f", cfg.krum_f)
        needed, sampled = 4 * f + 3, cfg.clients_per_round
        if sampled < needed:
            allowed = f"fraction-train x num-clients >= {needed}" + (
                f", or krum-f <= {(sampled - 3) // 4}" if sampled >= 3 else "")
            problems.append(
                f"defense='bulyan' needs 4f+3 = {needed} updates a round (f = {f_key}={f}), but "
                f"fraction-train={cfg.fraction_train} x num-clients={cfg.num_clients} samples {sampled}, "
                f"so it would never aggregate; allowed: {allowed}")
    problems += _run_folder_problems(cfg)
    if cfg.synth_config and Path(cfg.synth_config).expanduser().is_file():
        from clipfed.data_synth.provider import synth_config_for

        try:
            synth_config_for(cfg)
        except ValueError as err:
            problems.append(f"synth-config={cfg.synth_config!r}: {err}")
    return problems


def _run_folder_problems(cfg: RunConfig) -> list[str]:
    """``resume-from`` and ``init-model`` through the ServerApp's own loaders (result, checkpoint,
    the same config, the same architecture); init-model is ignored when resuming, as there."""
    from clipfed.models import create_model
    from clipfed.runs.checkpoint import load_init_model, load_resume

    key, folder = ("resume-from", cfg.resume_from) if cfg.resume_from else ("init-model", cfg.init_model)
    if not folder or not Path(folder).expanduser().is_dir():
        return []  # none given, or file_problems said it is missing
    try:
        if key == "resume-from":
            load_resume(cfg)
        else:
            load_init_model(cfg, create_model(cfg.model, cfg.num_classes).state_dict())
    except ConfigError as err:
        return err.problems
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
        # a damaged result.json or checkpoint.pt: say so instead of a traceback
        return [f"{key}={folder!r}: cannot be read ({type(err).__name__}: {err})"]
    return []


def preflight(run_config: Mapping[str, Any], num_supernodes: int | None = None,
              idle_defense_ok: bool = False) -> RunConfig:
    """The validated config, or ``ConfigError`` listing every problem at once: RunConfig's rules,
    then the checks above. ``idle_defense_ok``: a defense that would keep the previous model every
    round is a result (the bench reports it as n/a), not a mistake."""
    problems = file_problems(run_config)
    try:
        cfg = load_run_config(run_config)
    except ConfigError as err:
        raise ConfigError.listing([*err.problems, *problems]) from None
    problems += launch_problems(cfg, num_supernodes, idle_defense_ok)
    if problems:
        raise ConfigError.listing(problems)
    return cfg
