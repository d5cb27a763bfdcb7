"""The reference teacher's two strengths (``teacher-pool``): what each trains on, how runs and
tables name it, and that a key added later leaves earlier hashes (run folders, cache files) as
they were."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipfed.checks import load_run_config
from clipfed.config import ConfigError, RunConfig
from clipfed.data import load_cifar10
from clipfed.data_synth import SynthConfig
from clipfed.data_synth.config import ImageConfig, PoolConfig
from clipfed.data_synth.pipeline import load_teacher, public_pool
from clipfed.data_synth.provider import synth_config_for
from clipfed.runs.results import REFERENCE_TEACHER, REFERENCE_TEACHER_TRAIN_SPLIT, teacher_of
from clipfed.teacher import TeacherSpec, teacher_pool


def test_a_key_at_its_default_leaves_the_config_hash_unchanged() -> None:
    implicit = RunConfig.from_flower({"seed": 3})
    explicit = RunConfig.from_flower({"seed": 3, "teacher-pool": "public", "device": "auto"})
    assert implicit.config_hash() == explicit.config_hash()
    assert implicit.config_hash() != RunConfig.from_flower({"seed": 3, "teacher-pool": "train-split"}).config_hash()


def test_a_spec_field_at_its_default_leaves_the_spec_hash_unchanged() -> None:
    assert TeacherSpec().spec_hash() == TeacherSpec(reference_pool="public").spec_hash()
    assert TeacherSpec().spec_hash() != TeacherSpec(reference_pool="train-split").spec_hash()


@pytest.mark.parametrize("keys", [{"teacher": "openclip", "teacher-pretrained": "laion2b_s34b_b79k"},
                                  {"teacher-checkpoint": "/tmp/teacher.pt"}])
def test_teacher_pool_with_a_teacher_that_trains_nothing_is_refused_naming_the_key(keys: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="teacher-pool='train-split'"):
        load_run_config({"teacher-pool": "train-split", **keys})


def test_the_run_key_reaches_the_recipe_and_epochs_follow_the_pool() -> None:
    spec = synth_config_for(load_run_config({"teacher-pool": "train-split"})).teacher
    assert spec.reference_pool == "train-split" and spec.epochs == 10
    assert synth_config_for(load_run_config({})).teacher.epochs == 30
    assert TeacherSpec(reference_pool="train-split", reference_epochs=2).epochs == 2


def test_each_strength_trains_on_its_own_pool(fake_data_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The weak teacher sees only the public pool; the strong one the whole train split (the
    pool's images and the clients'), and its id and table label say so."""
    monkeypatch.setenv("CLIPFED_CACHE_DIR", str(tmp_path))
    base = SynthConfig(data_dir=str(fake_data_dir), images=ImageConfig(pool=PoolConfig(public_pool_fraction=0.5)))
    train, _ = load_cifar10(str(fake_data_dir))
    pool = public_pool(base)
    weak = base.model_copy(update={"teacher": TeacherSpec(reference_epochs=1)})
    strong = base.model_copy(update={"teacher": TeacherSpec(reference_epochs=1, reference_pool="train-split")})
    assert teacher_pool(weak.teacher, pool, train) is pool
    assert teacher_pool(strong.teacher, pool, train) is train and len(train) > len(pool)
    assert teacher_pool(TeacherSpec(backend="openclip", pretrained="random"), pool, train) is None

    labels = {}
    for name, cfg in (("weak", weak), ("strong", strong)):
        teacher = load_teacher(cfg)
        result = {"server_data": {"teacher": teacher.label, "reference_teacher": teacher.is_reference}}
        labels[name] = (teacher.id, teacher_of(result))
    assert ":pool-" in labels["weak"][0] and labels["weak"][1] == REFERENCE_TEACHER
    assert ":train-split-" in labels["strong"][0] and labels["strong"][1] == REFERENCE_TEACHER_TRAIN_SPLIT
    cached = sorted(p.name.startswith("reference-train-split-") for p in (tmp_path / "teachers").iterdir())
    assert cached == [False, True]  # one cache file per strength
    assert np.isfinite(teacher.encode_images(np.asarray(train.images[:4])).numpy()).all()


def test_the_teacher_pool_flag_with_a_teacher_that_trains_nothing_is_refused_naming_the_flag() -> None:
    import argparse

    from clipfed.errors import UserError
    from clipfed.guard.cli import teacher_spec

    args = argparse.Namespace(teacher="openclip", teacher_model="ViT-B-32", teacher_pretrained="laion2b_s34b_b79k",
                              teacher_checkpoint="", teacher_pool="train-split")
    with pytest.raises(UserError, match="--teacher-pool train-split"):
        teacher_spec(args)
    args.teacher, args.teacher_pretrained = "reference", ""
    assert teacher_spec(args).reference_pool == "train-split"
