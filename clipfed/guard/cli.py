"""``clipfed teacher audit | repair | guard-demo``; handlers import torch-heavy modules when they run.

Every ``clipfed teacher`` command that picks a teacher takes the run keys' names and defaults as
flags (``add_teacher_arguments``): ``--teacher``, ``--teacher-model``, ``--teacher-pretrained``,
``--teacher-checkpoint``, ``--teacher-pool``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from clipfed.checks import load_run_config
from clipfed.config import ORACLES, TEACHER_POOLS, TEACHERS, RunConfig, teacher_pool_unused
from clipfed.errors import UserError

if TYPE_CHECKING:
    from clipfed.data import ImageSet
    from clipfed.guard.oracle import Oracle
    from clipfed.teacher.base import Teacher, TeacherSpec


def add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    """The teacher run keys as flags, with the run keys' defaults."""
    default = {key: RunConfig.model_fields[key].default
               for key in ("teacher", "teacher_model", "teacher_pretrained", "teacher_checkpoint", "teacher_pool")}
    p.add_argument("--teacher", choices=TEACHERS, default=default["teacher"])
    p.add_argument("--teacher-model", default=default["teacher_model"], help="open_clip model name")
    p.add_argument("--teacher-pretrained", default=default["teacher_pretrained"],
                   help="open_clip tag; 'random': random weights on purpose")
    p.add_argument("--teacher-checkpoint", default=default["teacher_checkpoint"],
                   help="the teacher's weights file (a reference teacher without one is trained on --teacher-pool)")
    p.add_argument("--teacher-pool", choices=TEACHER_POOLS, default=default["teacher_pool"],
                   help="what a reference teacher trains on: the public pool (weak) or the clean train split "
                        "(strong; it has seen images like the clients')")


def teacher_spec(args: argparse.Namespace) -> TeacherSpec:
    """The spec the teacher flags describe; ``UserError`` naming the flag that cannot work."""
    from pydantic import ValidationError

    from clipfed.teacher import TeacherSpec

    if teacher_pool_unused(args.teacher, args.teacher_pool, args.teacher_checkpoint):
        raise UserError(f"--teacher-pool {args.teacher_pool}: only a reference teacher without --teacher-checkpoint "
                        "is trained here; allowed: --teacher-pool public")
    if args.teacher_checkpoint and not Path(args.teacher_checkpoint).is_file():
        raise UserError(f"--teacher-checkpoint {args.teacher_checkpoint}: no such file; "
                        "allowed: the teacher's weights file")
    try:
        return TeacherSpec(backend=args.teacher, model=args.teacher_model, pretrained=args.teacher_pretrained,
                           checkpoint=args.teacher_checkpoint, reference_pool=args.teacher_pool)
    except ValidationError as err:  # each message names the setting and what would work
        raise UserError(f"--teacher {args.teacher}: "
                        + "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())) from None


def _run_config(args: argparse.Namespace) -> RunConfig:
    values = {"seed": args.seed, "attack": args.attack}
    data_dir = args.data_dir or os.environ.get("CLIPFED_DATA_DIR", "")
    if data_dir:
        values["data-dir"] = str(Path(data_dir).resolve())
    return load_run_config(values)


def _probe_and_oracle(args: argparse.Namespace) -> tuple[ImageSet, Oracle, Teacher]:
    """The probe set (an npz with images/labels, or the run's public pool), the oracle, the teacher."""
    from clipfed.data import load_federated
    from clipfed.guard.oracle import ORACLES
    from clipfed.guard.policy import load_probe
    from clipfed.teacher import TeacherSpec, create_teacher, teacher_pool
    from clipfed.teacher.reference import load_or_train_reference

    if args.teacher_guard_probe and not Path(args.teacher_guard_probe).is_file():
        raise UserError(f"--teacher-guard-probe {args.teacher_guard_probe}: no such file")
    spec = teacher_spec(args)
    cfg = _run_config(args)
    train, _, split = load_federated(cfg)
    pool = train.subset(split.public_pool)
    probe = load_probe(args.teacher_guard_probe, pool.classes) if args.teacher_guard_probe else pool
    teacher = create_teacher(spec, teacher_pool(spec, pool, train))
    if args.teacher_guard_oracle == "reference":
        oracle = ORACLES.get("reference")(load_or_train_reference(TeacherSpec(), pool).model)
    else:
        oracle = ORACLES.get(args.teacher_guard_oracle)(args.teacher_guard_oracle_model)
    return probe, oracle, teacher


def cmd_audit(args: argparse.Namespace) -> int:
    from clipfed.guard.audit import audit_teacher, write_audit
    from clipfed.guard.policy import classifier_of

    probe, oracle, teacher = _probe_and_oracle(args)
    report = audit_teacher(classifier_of(teacher, probe.classes), oracle, probe.images, list(probe.classes),
                           teacher_id=teacher.id)
    write_audit(report, probe.images, Path(args.out_dir))
    print(report.summary())
    print(f"written: {Path(args.out_dir) / 'audit.json'}, audit.txt, examples.png")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from clipfed.guard.policy import guard_teacher

    probe, oracle, teacher = _probe_and_oracle(args)
    _, record = guard_teacher(teacher, oracle, probe, "repair", Path(args.out_dir))
    print(json.dumps(record, indent=2))
    return 0


def cmd_guard_demo(args: argparse.Namespace) -> int:
    from clipfed.guard.policy import demo_summary, demonstrate

    if not 0 < args.poison_rate <= 1:
        raise UserError(f"--poison-rate {args.poison_rate}: allowed: a share of the pool in (0, 1]")
    if args.attack == "none":
        raise UserError("--attack none: the demonstration poisons the teacher with a trigger; "
                        "allowed: any attack but none")
    result = demonstrate(_run_config(args), Path(args.out_dir).resolve(), args.poison_rate)
    print(demo_summary(result))
    return 0


def add_guard_parsers(teacher: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", help="CIFAR-10 (else CLIPFED_DATA_DIR)")
        p.add_argument("--seed", type=int, default=0, help="the run seed whose public pool is the server's")
        p.add_argument("--attack", default="badnets", help="the trigger used to measure ASR")
        p.add_argument("--out-dir", required=True)
        return p

    for name, func, helptext in (("audit", cmd_audit, "audit a teacher with a segmentation oracle"),
                                 ("repair", cmd_repair, "audit, then repair with a compact fine-tuning set")):
        p = common(teacher.add_parser(name, help=helptext))
        add_teacher_arguments(p)
        p.add_argument("--teacher-guard-probe",
                       help="npz with images (N,32,32,3 uint8) and labels; default: the public pool")
        p.add_argument("--teacher-guard-oracle", choices=ORACLES, default="reference")
        p.add_argument("--teacher-guard-oracle-model", default="CIDAS/clipseg-rd64-refined",
                       help="clipseg: model id or folder")
        p.set_defaults(func=func)
    demo = common(teacher.add_parser("guard-demo", help="offline: poison a teacher, audit it, repair it"))
    demo.add_argument("--poison-rate", type=float, default=0.05, help="share of the pool that is poisoned")
    demo.set_defaults(func=cmd_guard_demo)
