"""The run folder and ``result.json``: resolved config, versions, device, per-round metrics, final table.

``result.json`` is rewritten atomically after every round, so a crashed run leaves a readable
partial result (``status: running``), and a run folder that exists is never reused.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipfed import __version__
from clipfed.config import RunConfig
from clipfed.devices import amp_active, describe
from clipfed.errors import UserError
from clipfed.evaluation import Evaluation, format_metric
from clipfed.runs.report import AggregationReport

if TYPE_CHECKING:
    import torch

    from clipfed.data_synth.artifact import ServerDataset

RESULT_FILE = "result.json"


class RunExistsError(FileExistsError):
    """The run folder exists already; results are never overwritten."""


class NotARunError(UserError, FileNotFoundError):
    """A folder given as a run folder holds no readable clipfed ``result.json``."""


def _git_commit() -> str | None:
    """The commit of the clipfed checkout, found through the installed package's source folder."""
    source = Path(__file__).resolve().parent.parent
    try:
        dist = metadata.distribution("clipfed")
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("url", "").startswith("file://"):
            source = Path(direct["url"].removeprefix("file://"))
    except metadata.PackageNotFoundError:
        pass
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    def version_of(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "torch": version_of("torch"),
        "flwr": version_of("flwr"),
        "numpy": version_of("numpy"),
        "clipfed": __version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
    }


def default_run_name(cfg: RunConfig) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{cfg.defense}-{cfg.attack}-{cfg.dataset}-s{cfg.seed}-{stamp}-{cfg.config_hash()[:6]}"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class RunRecorder:
    """Collects each round's aggregation report and evaluation into ``result.json``."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.path = run_dir / RESULT_FILE
        self.pending: dict[int, AggregationReport] = {}
        self.last_round_end = time.perf_counter()
        self.payload: dict[str, Any] = {
            "status": "running",
            "run_name": run_dir.name,
            "config": cfg.to_flower(),
            "config_hash": cfg.config_hash(),
            "versions": versions(),
            "seed": cfg.seed,
            "started_at": datetime.now(UTC).isoformat(),
            "rounds": [],
            "final": None,
        }

    @classmethod
    def create(cls, cfg: RunConfig, resumed: dict[str, Any] | None = None) -> RunRecorder:
        """Make ``<out-dir>/<run-name>`` (refusing one that exists) and write the initial file.

        ``resumed``: the interrupted run's result, whose rounds this run carries on from.
        """
        name = cfg.run_name or default_run_name(cfg)
        run_dir = Path(cfg.out_dir).expanduser().resolve() / name
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise RunExistsError(
                f"run folder {run_dir} exists; results are never overwritten. "
                "Choose another run-name (or leave it empty for a unique one)."
            ) from None
        recorder = cls(cfg, run_dir)
        if resumed is not None:
            recorder.payload["rounds"] = resumed["rounds"]
            recorder.payload["resumed_from"] = {"run": resumed["run_name"], "path": cfg.resume_from,
                                                "after_round": resumed["rounds"][-1]["round"]}
            for key in ("server_data", "init_model"):
                if key in resumed:
                    recorder.payload[key] = resumed[key]
        recorder.flush()
        return recorder

    def note_server_data(self, dataset: ServerDataset, cache_hit: bool) -> None:
        """Record which server dataset and teacher the defense used (and if it is the stand-in)."""
        manifest = dataset.manifest
        self.payload["server_data"] = {
            "artifact": dataset.path.name,
            "content_hash": manifest["content_hash"],  # recipe + teacher weights + input images
            "recipe_hash": manifest["recipe_hash"],
            "data_digest": manifest["data_digest"],  # sha256 of the images and labels themselves
            "teacher": manifest["teacher"]["label"],
            "teacher_weights": manifest["teacher"]["weights_digest"],
            "reference_teacher": manifest["teacher"]["is_reference"],
            "images": manifest["counts"]["total"],
            "cache_hit": cache_hit,  # teacher outputs reused from an earlier build of this recipe
        }
        self.flush()

    def note_device(self, device: torch.device, amp: bool) -> None:
        """Record where the server computed (``describe``: ``cpu`` or ``cuda:0 <GPU name>``) and
        whether bf16 autocast was on there (``amp`` on CUDA; on the CPU ``amp`` does nothing).
        Each client resolves ``device`` on its own node (a node config may set its own)."""
        self.payload["device"] = {"server": describe(device), "amp": amp_active(device, amp),
                                  "configured": self.cfg.device}
        self.flush()

    def flush(self) -> None:
        write_json_atomic(self.path, self.payload)

    def on_report(self, report: AggregationReport) -> None:
        self.pending[report.server_round] = report

    def on_evaluation(self, server_round: int, evaluation: Evaluation, eval_seconds: float) -> dict[str, Any]:
        now = time.perf_counter()
        report = self.pending.pop(server_round, AggregationReport(server_round))
        entry = {
            "round": server_round,
            "ma": evaluation.ma,
            "asr": evaluation.asr,
            "per_class_acc": evaluation.per_class_acc,
            "diverged": evaluation.diverged,  # non-finite model: MA/ASR are null, not numbers
            "unavailable": evaluation.unavailable,  # metric -> why it is null
            "participants": report.participants,
            "malicious": report.malicious,
            "excluded": report.excluded,
            "rejected": report.rejected,
            "missing": report.missing,
            "offline": report.offline,
            "refused": report.refused,  # SuperNodes whose partition claim was refused, and why
            "detection": report.detection(),
            "server_seconds": report.server_seconds,
            "eval_seconds": eval_seconds,
            "round_seconds": now - self.last_round_end,
            "defense": report.details,
        }
        self.last_round_end = now
        self.payload["rounds"].append(entry)
        self.flush()
        print(progress_line(entry, self.cfg.num_server_rounds), flush=True)
        return entry

    def finish(self, status: str = "completed") -> None:
        last = self.payload["rounds"][-1] if self.payload["rounds"] else None
        if last is not None:
            self.payload["final"] = {k: last[k] for k in ("ma", "asr", "per_class_acc")}
        self.payload["status"] = status
        self.payload["finished_at"] = datetime.now(UTC).isoformat()
        self.flush()


def mark_stopped(run_dir: Path, status: str) -> None:
    """Record ``status`` (``interrupted``, ``failed``) in a run the ServerApp could not finish itself
    (its process was stopped from outside): a ``running`` result.json would read as still going."""
    path = Path(run_dir) / RESULT_FILE
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # the run never started writing: nothing to mark
    if payload.get("status") == "running":
        payload["status"] = status
        payload["finished_at"] = datetime.now(UTC).isoformat()
        write_json_atomic(path, payload)


def progress_line(entry: dict[str, Any], num_rounds: int) -> str:
    det, diverged = entry["detection"], entry.get("diverged", False)
    return (
        f"[clipfed] round {entry['round']:>3}/{num_rounds} | MA {format_metric(entry['ma'], diverged):>5} | "
        f"ASR {format_metric(entry['asr'], diverged):>5} | excluded {entry['excluded']} "
        f"(tp {det['tp']} fp {det['fp']}) | server {entry['server_seconds']:.2f} s | "
        f"round {entry['round_seconds']:.1f} s"
    )


def load_result(run_dir: Path) -> dict[str, Any]:
    """A run folder's ``result.json``; ``NotARunError`` naming the folder if it has none, or one
    that is not a clipfed result."""
    path = Path(run_dir) / RESULT_FILE
    allowed = "allowed: a folder a run wrote, e.g. runs/<run-name>"
    if not Path(run_dir).is_dir():
        raise NotARunError(f"{run_dir}: no such folder; {allowed}")
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        inside = " (its runs are in runs/ inside it)" if (Path(run_dir) / "runs").is_dir() else ""
        raise NotARunError(f"{run_dir}: not a run folder, it holds no {RESULT_FILE}{inside}; {allowed}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NotARunError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(result, dict) or not {"run_name", "config", "rounds"} <= set(result):
        raise NotARunError(f"{path}: not a clipfed result (it lacks run_name, config or rounds)")
    return result


def diverged_at(result: dict[str, Any]) -> int | None:
    """The round from which the run's global model stayed diverged (non-finite) to the end, or None
    when its final model is finite: its final MA/ASR are then null, and a table must say why."""
    first = None
    for entry in result["rounds"]:
        if not entry.get("diverged"):
            first = None
        elif first is None:
            first = entry["round"]
    return first


def detection_totals(result: dict[str, Any]) -> tuple[int, int, int]:
    """(tp, fp, fn) summed over a run's attacked rounds (from ``attack-start-round``, round 0 never)."""
    start = max(result["config"]["attack-start-round"], 1)
    attacked = [r["detection"] for r in result["rounds"] if r["round"] >= start]
    return (sum(d["tp"] for d in attacked), sum(d["fp"] for d in attacked), sum(d["fn"] for d in attacked))


def results_table(results: list[dict[str, Any]]) -> str:
    """A Markdown MA/ASR table, one row per run, with detection over the attacked rounds."""
    header = ("| run | defense | attack | malicious | rounds | final MA | final ASR | "
              "recall | precision | server s/round |")
    lines = [header, "|" + "---|" * 10]
    for res in results:
        cfg, rounds = res["config"], [r for r in res["rounds"] if r["round"] > 0]
        tp, fp, fn = detection_totals(res)
        recall = f"{tp / (tp + fn):.2f}" if tp + fn else "n/a"
        precision = f"{tp / (tp + fp):.2f}" if tp + fp else "n/a"
        server = f"{sum(r['server_seconds'] for r in rounds) / len(rounds):.2f}" if rounds else "n/a"
        final, diverged = res.get("final") or {}, diverged_at(res)
        ma, asr = (format_metric(final.get(k)) if diverged is None else f"diverged (round {diverged})"
                   for k in ("ma", "asr"))
        status = res.get("status", "completed")
        done = f"{len(rounds)}" if status == "completed" else f"{len(rounds)} ({status})"  # never a silent stop
        lines.append(
            f"| {res['run_name']} | {cfg['defense']} | {cfg['attack']} | {cfg['num-malicious']} | "
            f"{done} | {ma} | {asr} | {recall} | "
            f"{precision} | {server} |"
        )
    return "\n".join(lines)
