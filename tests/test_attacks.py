import numpy as np
import pytest

from clipfed.attacks import create_attack, list_attacks
from clipfed.attacks.data.badnets import BadNets, patch_pattern
from clipfed.attacks.data.blended import blend_pattern
from clipfed.config import RunConfig


def images(n: int = 50) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_registry_lists_and_builds_attacks() -> None:
    assert {"badnets", "blended"} <= set(list_attacks())
    assert create_attack(RunConfig.from_flower({"attack": "none"})) is None


@pytest.mark.parametrize("position", ["bottom-right", "top-left", "center"])
def test_badnets_stamps_the_patch_only_at_its_position(position: str) -> None:
    attack = create_attack(RunConfig.from_flower({"patch-position": position, "patch-size": 5}))
    assert attack is not None and isinstance(attack.data, BadNets)
    clean = images()
    triggered = attack.apply_trigger(clean)
    mask = attack.data.trigger_mask(32, 32)
    assert mask.sum() == 25
    assert np.all(triggered[:, mask] == patch_pattern("checkerboard", 5).reshape(25, 3))
    assert np.array_equal(triggered[:, ~mask], clean[:, ~mask])


def test_badnets_patterns() -> None:
    board = patch_pattern("checkerboard", 3)
    assert board[0, 0, 0] == 255 and board[0, 1, 0] == 0
    assert np.all(patch_pattern("white", 3) == 255)
    assert np.array_equal(patch_pattern("random", 3), patch_pattern("random", 3))


def test_blended_mixes_with_alpha() -> None:
    attack = create_attack(RunConfig.from_flower({"attack": "blended", "blend-alpha": 0.25}))
    clean = images(4)
    expected = np.rint(0.75 * clean.astype(np.float32) + 0.25 * blend_pattern("noise", 32, 32))
    assert np.array_equal(attack.apply_trigger(clean), expected.astype(np.uint8))


@pytest.mark.parametrize("name", ["badnets", "blended"])
def test_poison_honours_rate_target_and_spares_target_class(name: str) -> None:
    cfg = RunConfig.from_flower({"attack": name, "poison-rate": 0.3, "target-label": 2})
    attack = create_attack(cfg)
    labels = np.arange(200) % 10
    clean = images(200)
    result = attack.data.poison(clean, labels, np.random.default_rng(1))
    assert result.poisoned.sum() == 60
    assert np.all(result.labels[result.poisoned] == 2)
    assert not np.any(result.poisoned & (labels == 2)), "a target-class image was 'poisoned'"
    assert np.array_equal(result.labels[~result.poisoned], labels[~result.poisoned])
    assert np.array_equal(result.images[~result.poisoned], clean[~result.poisoned])
    assert np.array_equal(result.images[result.poisoned], attack.apply_trigger(clean[result.poisoned]))
    assert np.array_equal(labels, np.arange(200) % 10), "poison() modified its input"
