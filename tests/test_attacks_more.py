"""DBA, the frequency trigger, label flipping, scaling and Neurotoxin."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import class_images

from clipfed.attacks import create_attack
from clipfed.attacks.base import AttackContext
from clipfed.attacks.update.neurotoxin import neurotoxin_mask
from clipfed.checks import load_run_config
from clipfed.config import ConfigError, RunConfig
from clipfed.dct import band_energy


def images(n: int = 40) -> np.ndarray:
    return class_images(np.arange(n) % 10, np.random.default_rng(0))


def test_dba_parts_are_disjoint_and_union_to_the_full_trigger() -> None:
    attack = create_attack(RunConfig.from_flower({"attack": "dba", "dba-parts": 4, "patch-size": 6}))
    masks = [attack.data.part_mask(k, 32, 32) for k in range(4)]
    assert np.array_equal(np.logical_or.reduce(masks), attack.data.trigger_mask(32, 32))
    assert sum(int(m.sum()) for m in masks) == 36
    clean = images(5)
    stamped = attack.data.training_trigger(clean, malicious_rank=1)
    changed = (stamped != clean).any(axis=(0, 3))
    assert not changed[~masks[1]].any(), "rank 1 stamped outside its part"
    full = attack.apply_trigger(clean)
    assert np.array_equal(full[:, attack.data.trigger_mask(32, 32)],
                          np.broadcast_to(attack.data.pattern.reshape(-1, 3), (5, 36, 3)))


def test_dba_parts_are_non_empty_disjoint_and_cover_the_patch_for_every_allowed_config() -> None:
    positions = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
    for size in range(1, 17):
        for parts in range(1, min(16, size * size) + 1):
            attack = create_attack(RunConfig.from_flower({
                "attack": "dba", "patch-size": size, "dba-parts": parts,
                "patch-position": positions[(size + parts) % len(positions)]}))
            masks = np.stack([attack.data.part_mask(k, 32, 32) for k in range(parts)])
            assert masks.sum(axis=(1, 2)).min() >= 1, f"patch-size={size} dba-parts={parts}: an empty part"
            assert masks.sum(axis=0).max() == 1, f"patch-size={size} dba-parts={parts}: parts overlap"
            assert np.array_equal(masks.any(axis=0), attack.data.trigger_mask(32, 32)), (size, parts)


def test_dba_default_parts_are_the_patch_quadrants() -> None:
    attack = create_attack(RunConfig.from_flower({"attack": "dba", "patch-size": 4, "dba-parts": 4}))
    row, col = np.argwhere(attack.data.trigger_mask(32, 32)).min(axis=0)
    for k, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        expected = np.zeros((32, 32), dtype=bool)
        expected[row + r : row + r + 2, col + c : col + c + 2] = True
        assert np.array_equal(attack.data.part_mask(k, 32, 32), expected)


def test_more_dba_parts_than_patch_pixels_is_refused_naming_dba_parts() -> None:
    with pytest.raises(ConfigError, match=r"dba-parts=5 exceeds the 4 pixels of a patch-size=2 patch"):
        load_run_config({"attack": "dba", "patch-size": 2, "dba-parts": 5})
    with pytest.raises(ConfigError, match=r"dba-parts=5 exceeds"):  # the data part decides, not the name
        load_run_config({"attack": "scaling", "attack-data": "dba", "patch-size": 2, "dba-parts": 5})
    assert load_run_config({"attack": "badnets", "patch-size": 1}).dba_parts == 4  # DBA only


def test_frequency_trigger_is_imperceptible_and_in_its_band() -> None:
    cfg = RunConfig.from_flower({"attack": "frequency", "freq-psnr": 32.0})
    attack = create_attack(cfg)
    clean = images()
    poisoned = attack.apply_trigger(clean)
    mse = np.mean((poisoned.astype(np.float64) - clean) ** 2, axis=(1, 2, 3))
    psnr = 10 * np.log10(255.0**2 / mse)
    assert psnr.min() >= 30.0
    band = (cfg.freq_band_low, cfg.freq_band_high)
    delta = poisoned.astype(np.float64) - clean
    in_band = band_energy(np.clip(delta + 128, 0, 255).astype(np.uint8), band)
    assert in_band > 10 * band_energy(np.full_like(clean, 128), band) + 1e-9
    assert band_energy(poisoned, band) > band_energy(clean, band)


def test_label_flip_relabels_only_the_source_class() -> None:
    attack = create_attack(RunConfig.from_flower({"attack": "labelflip", "flip-source": 3, "target-label": 5,
                                                  "poison-rate": 0.05}))
    labels = np.arange(200) % 10
    result = attack.data.poison(images(200), labels, np.random.default_rng(0))
    assert result.poisoned.sum() == 10 and np.all(labels[result.poisoned] == 3)
    assert np.all(result.labels[result.poisoned] == 5)
    assert np.array_equal(result.images, images(200))


def test_scaling_multiplies_the_update() -> None:
    attack = create_attack(RunConfig.from_flower({"attack": "scaling", "boost-factor": 4.0}))
    global_state = {"w": np.ones(5, dtype=np.float32)}
    local = {"w": np.full(5, 1.5, dtype=np.float32)}
    out = attack.update.craft(local, AttackContext(1, 0, global_state))
    np.testing.assert_allclose(out["w"], 1 + 4.0 * 0.5)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_neurotoxin_keeps_the_chosen_fraction_of_least_changed_coordinates(keep: float) -> None:
    step = np.random.default_rng(0).standard_normal(1000)
    mask = neurotoxin_mask(step, keep)
    assert mask.sum() == int(keep * 1000)
    assert np.abs(step[mask]).max() <= np.abs(step[~mask]).min()

    attack = create_attack(RunConfig.from_flower({"attack": "badnets", "attack-update": "neurotoxin",
                                                  "neurotoxin-keep": keep}))
    memory: dict[str, np.ndarray] = {}
    first_global = {"w": np.zeros(1000, dtype=np.float32)}
    local = {"w": np.ones(1000, dtype=np.float32)}
    assert np.array_equal(attack.update.craft(local, AttackContext(1, 0, first_global, memory))["w"], local["w"])
    second_global = {"w": step.astype(np.float32)}
    out = attack.update.craft({"w": second_global["w"] + 1}, AttackContext(2, 0, second_global, memory))
    kept = (out["w"] - second_global["w"]) != 0
    assert kept.sum() == int(keep * 1000)
