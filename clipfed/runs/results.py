"""The run folder and ``result.json``: resolved config, versions, device, per-round metrics, final table.

``result.json`` is rewritten atomically after every round, so a crashed run leaves a readable
partial result (``status: running``), and a run folder that exists is never reused. It records
the process that writes it, so that a reader on the same machine tells a run still going from one
whose process is gone (``load_result``: status ``stopped``).
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
from statistics import mean, pstdev
from typing import TYPE_CHECKING, Any

from clipfed import __version__
from clipfed.config import RunConfig, default_of
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


def _head(folder: Path) -> str | None:
    """HEAD of the git work tree whose top is ``folder`` (not of one it merely lies in, such as a
    project holding a virtual environment), or None."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    top, _, head = out.stdout.strip().partition("\n")
    if Path(top).resolve() != folder.resolve():
        return None
    return head.strip() or None


def _git_commit() -> str | None:
    """The commit of the code that runs: the checkout this module was imported from (an editable
    install, or another work tree on ``PYTHONPATH``), else the one a regular install was made from
    (its ``direct_url.json``; it may have moved on since)."""
    if commit := _head(Path(__file__).resolve().parents[2]):  # the folder holding the clipfed package
        return commit
    try:
        direct = json.loads(metadata.distribution("clipfed").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        return None
    url = direct.get("url", "")
    return _head(Path(url.removeprefix("file://"))) if url.startswith("file://") else None


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
            "process": {"host": platform.node(), "pid": os.getpid()},
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

    def on_evaluation(self, server_round: int, evaluation: Evaluation, eval_seconds: float,
                      trigger_seconds: float = 0.0) -> dict[str, Any]:
        now = time.perf_counter()
        report = self.pending.pop(server_round, AggregationReport(server_round))
        entry = {
            "round": server_round,
            "ma": evaluation.ma,
            "asr": evaluation.asr,
            "racc": evaluation.racc,  # accuracy of the true label on the images ASR counts
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
            "trigger_seconds": trigger_seconds,  # re-deriving a learned trigger (in round_seconds; else 0)
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
            self.payload["final"] = {k: last[k] for k in ("ma", "asr", "racc", "per_class_acc")}
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
        f"ASR {format_metric(entry['asr'], diverged):>5} | R-Acc {format_metric(entry['racc'], diverged):>5} | "
        f"excluded {entry['excluded']} "
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
    return _with_liveness(result)


def _with_liveness(result: dict[str, Any]) -> dict[str, Any]:
    """A ``running`` result whose writing process is gone (killed with SIGKILL, the machine
    rebooted: nothing could record it) reads as ``stopped``, with why in ``stopped_why``, so no
    table calls a dead run running. Only on the machine that ran it; a result that records no
    process (written before clipfed recorded it) keeps its status."""
    process = result.get("process") or {}
    if result.get("status") != "running" or process.get("host") != platform.node() or "pid" not in process:
        return result
    try:
        os.kill(int(process["pid"]), 0)
    except ProcessLookupError:
        rounds = sum(1 for e in result["rounds"] if e.get("round", 0) >= 1)
        return {**result, "status": "stopped",
                "stopped_why": f"its process (pid {process['pid']} on {process['host']}) is gone after "
                               f"round {rounds}; nothing updates this run"}
    except PermissionError:  # alive, another user's
        pass
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


def attack_window(config: dict[str, Any]) -> tuple[int, int | None]:
    """A run's attack window from its config: (first attacked round, last one or None for "to the
    end"); round 0 (the initial model) is never attacked. Results written before
    ``attack-end-round`` existed attack to the end."""
    return max(config["attack-start-round"], 1), config.get("attack-end-round") or None


def in_window(config: dict[str, Any], server_round: int) -> bool:
    start, end = attack_window(config)
    return server_round >= start and (end is None or server_round <= end)


def detection_totals(result: dict[str, Any]) -> tuple[int, int, int]:
    """(tp, fp, fn) summed over a run's attack window (``attack-start-round`` to
    ``attack-end-round``; round 0 never)."""
    attacked = [r["detection"] for r in result["rounds"] if in_window(result["config"], r["round"])]
    return (sum(d["tp"] for d in attacked), sum(d["fp"] for d in attacked), sum(d["fn"] for d in attacked))


REFERENCE_TEACHER = "reference teacher (offline stand-in, not a CLIP)"
# The strong stand-in (teacher-pool='train-split'): the id of a teacher trained on the train split
# holds this source (clipfed.teacher.reference)
REFERENCE_TEACHER_TRAIN_SPLIT = ("reference teacher trained on the clean train split (offline stand-in, not a "
                                 "CLIP; it has seen images like the clients')")


def teacher_of(result: dict[str, Any]) -> str:
    """The teacher a run's defense used, as a table names it: the offline stand-in says so (and
    which of its two strengths it is), a run without a server dataset (every defense but CLIP-Fed,
    FLTrust and teacher-only) used none."""
    data = result.get("server_data")
    return teacher_name(str(data["teacher"]), bool(data.get("reference_teacher"))) if data else "none"


def teacher_name(label: str, is_reference: bool) -> str:
    """A teacher as a table names it, from its ``label`` (``Teacher.label``)."""
    if not is_reference:
        return label
    return REFERENCE_TEACHER_TRAIN_SPLIT if ":train-split-" in label else REFERENCE_TEACHER


def marked_rounds(result: dict[str, Any], mark: str) -> tuple[int, int]:
    """(rounds whose defense record holds ``mark``, rounds after round 0): ``skipped``, where the
    defense kept the previous model (a defense that never aggregated, Bulyan with too few updates,
    shows the warm start, not itself at work), or ``unfiltered``, where it had too few updates to
    filter."""
    rounds = [e for e in result["rounds"] if e["round"] >= 1]
    return sum(1 for e in rounds if e.get("defense", {}).get(mark)), len(rounds)


def run_status(result: dict[str, Any]) -> str:
    """The run's status (``completed``, ``failed``, ``interrupted``, ``running``, ``stopped``), with a mark
    where its defense never aggregated or skipped rounds, or had too few updates to filter, so a
    table never shows such a row as a plain result."""
    status = str(result.get("status", "completed"))
    skipped, rounds = marked_rounds(result, "skipped")
    unfiltered, _ = marked_rounds(result, "unfiltered")
    if rounds and skipped == rounds:
        status += ", NEVER AGGREGATED"
    elif skipped:
        status += f", kept the previous model in {skipped}/{rounds} rounds"
    if rounds and unfiltered == rounds:
        status += ", NEVER FILTERED (too few updates a round)"
    elif unfiltered:
        status += f", unfiltered in {unfiltered}/{rounds} rounds (too few updates)"
    return status


def _seedless(config: dict[str, Any]) -> str:
    """A run's config without what differs between seeds of one experiment: the seed, where the
    results go, and the warm start's path (one per seed, and with a plateau rule of a length of its
    own), and keys at their default. Whether it was warm-started stays: a cold and a warm run of
    otherwise equal keys are two experiments."""
    ignored = {"seed", "run-name", "out-dir", "resume-from", "init-model"}
    kept = {k: v for k, v in config.items() if k not in ignored and not _at_default(k, v)}
    return json.dumps({**kept, "warm-started": bool(config.get("init-model"))}, sort_keys=True)


def _at_default(key: str, value: Any) -> bool:
    """Whether a recorded key holds its default: a run recorded before a key existed, and one
    recorded since with the key at its default, are the same experiment (as ``config_hash`` says)."""
    try:
        return bool(default_of(key) == value)
    except KeyError:  # a key this version no longer has
        return False


def _tally(values: list[str]) -> str:
    """``completed`` when every run says so, else ``2 completed, 1 failed``."""
    counts = {v: values.count(v) for v in dict.fromkeys(values)}
    return values[0] if len(counts) == 1 else ", ".join(f"{n} {v}" for v, n in counts.items())


def _final_metric(results: list[dict[str, Any]], key: str) -> str:
    """A final metric over seeds: the value of one run, ``mean ± std`` of several; runs whose final
    model diverged are counted, never averaged in (one run: ``diverged (round k)``), and a run that
    did not complete is averaged in only when no seed did (its status column says so)."""
    results = [r for r in results if r.get("status", "completed") == "completed"] or results
    diverged = [at for r in results if (at := diverged_at(r)) is not None]
    if len(results) == 1 and diverged:
        return f"diverged (round {diverged[0]})"
    values = [v for r in results if diverged_at(r) is None
              if (v := (r.get("final") or {}).get(key)) is not None]
    shown = "n/a" if not values else (
        format_metric(values[0]) if len(values) == 1 else f"{mean(values):.3f} ± {pstdev(values):.3f}")
    return shown + (f" ({len(diverged)}/{len(results)} diverged)" if diverged else "")


def results_table(results: list[dict[str, Any]]) -> str:
    """A Markdown MA/ASR/R-Acc table, one row per experiment: runs whose configs differ only in
    the seed are one row (mean ± std over them, detection pooled over their attack windows), with
    the teacher, the seeds and the status of each row in the row itself."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        groups.setdefault(_seedless(res["config"]), []).append(res)
    header = ("| run | defense | attack | malicious | teacher | seeds | status | rounds | final MA | final ASR | "
              "final R-Acc | recall | precision | server s/round |")
    lines = [header, "|" + "---|" * 14]
    for group in groups.values():
        cfg = group[0]["config"]
        rounds = [r for res in group for r in res["rounds"] if r["round"] > 0]
        tp, fp, fn = (sum(column) for column in zip(*(detection_totals(r) for r in group), strict=True))
        recall = f"{tp / (tp + fn):.2f}" if tp + fn else "n/a"
        precision = f"{tp / (tp + fp):.2f}" if tp + fp else "n/a"
        server = f"{sum(r['server_seconds'] for r in rounds) / len(rounds):.2f}" if rounds else "n/a"
        done = []  # rounds per run, with the status of a run that did not complete: never a silent stop
        for res in group:
            count, status = sum(1 for r in res["rounds"] if r["round"] > 0), res.get("status", "completed")
            done.append(f"{count}" if status == "completed" else f"{count} ({status})")
        name = group[0]["run_name"] + (f" (+{len(group) - 1} seeds)" if len(group) > 1 else "")
        seeds = ",".join(str(res.get("seed", res["config"].get("seed", "?"))) for res in group)
        lines.append(
            f"| {name} | {cfg['defense']} | {cfg['attack']} | {cfg['num-malicious']} | "
            f"{_tally([teacher_of(r) for r in group])} | {seeds} | {_tally([run_status(r) for r in group])} | "
            f"{', '.join(dict.fromkeys(done))} | {_final_metric(group, 'ma')} | {_final_metric(group, 'asr')} | "
            f"{_final_metric(group, 'racc')} | {recall} | {precision} | {server} |"
        )
    return "\n".join(lines)


def rounds_table(result: dict[str, Any]) -> str:
    """One run round by round, as a markdown table: MA, ASR, R-Acc, the clients excluded with
    detection counts, the server's seconds (the defense's step), the round's seconds and the
    server's share of it (what `clipfed table --rounds` prints; a metric that could not be computed
    shows why, as in every table)."""
    lines = [f"**{result['run_name']}** ({run_status(result)}; teacher: {teacher_of(result)})", "",
             "| round | MA | ASR | R-Acc | excluded | tp / fp / fn | server s | round s | server share |",
             "|" + "---|" * 9]
    for entry in result["rounds"]:
        detection = entry.get("detection") or {}
        server, total = entry.get("server_seconds"), entry.get("round_seconds")
        share = f"{server / total:.0%}" if server is not None and total and entry["round"] > 0 else "n/a"
        metrics = [format_metric(entry.get(key), bool(entry.get("diverged"))) for key in ("ma", "asr", "racc")]
        seconds = ["n/a" if server is None else f"{server:.2f}", "n/a" if total is None else f"{total:.1f}"]
        lines.append(
            f"| {entry['round']} | {' | '.join(metrics)} | {entry.get('excluded', [])} | "
            f"{detection.get('tp', 0)} / {detection.get('fp', 0)} / {detection.get('fn', 0)} | "
            f"{' | '.join(seconds)} | {share} |")
    return "\n".join(lines)

