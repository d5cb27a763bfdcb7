"""Each baseline defense against hand-computed results on small crafted updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flower_mocks import arrays_of, server_identity, train_reply  # noqa: F401
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import Bulyan, Krum, MultiKrum
from scipy import stats

from clipfed.config import RunConfig
from clipfed.defense import create_defense
from clipfed.defense.fltrust import fltrust_aggregate, fltrust_weights
from clipfed.defense.foolsgold import foolsgold_weights
from clipfed.defense.rlr import rlr_learning_rates
from clipfed.runs.report import AggregationReport

pytestmark = pytest.mark.usefixtures("server_identity")
DIM = 6


def cfg(**overrides: object) -> RunConfig:
    return RunConfig.from_flower({"num-clients": 10, "num-malicious": 2, **overrides})


def run(defense: str, vectors: list[np.ndarray], base: np.ndarray | None = None, examples: list[int] | None = None,
        **overrides: object) -> tuple[np.ndarray | None, AggregationReport]:
    """Aggregate one round of flat updates (single array 'w') with ``defense``."""
    base = np.zeros(DIM, dtype=np.float32) if base is None else base
    reports: list[AggregationReport] = []
    strategy = create_defense(cfg(defense=defense, **overrides), on_report=reports.append)
    strategy.global_arrays = arrays_of({"w": base})
    examples = examples or [10] * len(vectors)
    replies = [train_reply(100 + i, i, {"w": (base + v).astype(np.float32)}, examples[i])
               for i, v in enumerate(vectors)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return (None if arrays is None else arrays["w"].numpy() - base), reports[0]


def crafted(seed: int = 0, honest: int = 6, outliers: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    good = [np.ones(DIM) + 0.1 * rng.standard_normal(DIM) for _ in range(honest)]
    bad = [-5 * np.ones(DIM) + 0.1 * rng.standard_normal(DIM) for _ in range(outliers)]
    return [v.astype(np.float32) for v in good + bad]


def flwr_reference(strategy: object, vectors: list[np.ndarray]) -> np.ndarray:
    replies = [train_reply(100 + i, i, {"w": v}, 10) for i, v in enumerate(vectors)]
    arrays, _ = strategy.aggregate_train(1, replies)  # type: ignore[attr-defined]
    return arrays["w"].numpy()


def test_krum_selects_the_update_closest_to_its_neighbours_and_agrees_with_flwr() -> None:
    vectors = crafted()
    result, report = run("krum", vectors)
    distances = np.array([[np.sum((a - b) ** 2) for b in vectors] for a in vectors])
    closest = len(vectors) - 2 - 2
    scores = [np.sort(np.delete(row, i))[:closest].sum() for i, row in enumerate(distances)]
    best = int(np.argmin(scores))
    np.testing.assert_allclose(result, vectors[best], rtol=1e-6)
    assert report.excluded == [i for i in range(8) if i != best]
    np.testing.assert_allclose(result, flwr_reference(Krum(num_malicious_nodes=2), vectors), rtol=1e-6)


def test_multikrum_averages_the_m_best_and_agrees_with_flwr() -> None:
    vectors = crafted()
    result, report = run("multikrum", vectors)  # m = n - f = 6
    assert sorted(report.excluded) == [6, 7]
    np.testing.assert_allclose(result, np.mean(vectors[:6], axis=0), rtol=1e-5)
    reference = flwr_reference(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=6), vectors)
    np.testing.assert_allclose(result, reference, rtol=1e-5)


@pytest.mark.parametrize("defense", ["krum", "multikrum", "bulyan"])
def test_krum_family_selects_by_the_exact_distances_when_weights_dwarf_updates(defense: str) -> None:
    """Weights of size 10 and updates of size 1e-3 (as after a round at a small lr): the
    distances flwr's formula gives over float32 weights are mostly rounding, which decides the
    selection (and differs between CPUs); over float64 updates the rule picks what exact
    distances pick. Honest updates lie at graded distances from their centre, so the right
    choice is unique and the gaps are far above float64's rounding."""
    rng = np.random.default_rng(3)
    dim, n = 4000, 11
    base = (10 + rng.standard_normal(dim)).astype(np.float32)
    centre = 1e-3 * rng.standard_normal(dim)
    spread = [0.2 + 0.1 * i for i in range(n)]  # client i's distance from the centre grows with i
    vectors = [(centre + s * 1e-3 * rng.standard_normal(dim)) for s in spread]
    sent = [(base + v.astype(np.float32)).astype(np.float32) for v in vectors]  # as run() sends them
    exact = [w.astype(np.float64) - base for w in sent]
    distances = np.array([[np.sum((a - b) ** 2) for b in exact] for a in exact])
    f = 2
    scores = [np.sort(np.delete(row, i))[:n - f - 2].sum() for i, row in enumerate(distances)]
    ranked = [int(i) for i in np.argsort(scores)]
    result, report = run(defense, [v.astype(np.float32) for v in vectors], base=base, **{"num-clients": 12})
    kept = sorted(set(range(n)) - set(report.excluded))
    if defense == "krum":
        assert kept == [ranked[0]]
    elif defense == "multikrum":
        assert kept == sorted(ranked[:n - f])
    else:  # flwr's Bulyan itself, told the theta = n - 2f updates exact distances rank best
        theta = n - 2 * f
        told = Bulyan(num_malicious_nodes=f, selection_rule=lambda contents, *_: [contents[i] for i in ranked[:theta]])
        expected = flwr_reference(told, sent) - base
        assert result is not None
        np.testing.assert_array_equal(result, expected)


def test_median_and_trimmed_mean_match_numpy_and_scipy() -> None:
    vectors = crafted(honest=7, outliers=3)
    result, _ = run("median", vectors)
    np.testing.assert_allclose(result, np.median(np.stack(vectors), axis=0), rtol=1e-6)
    result, _ = run("trimmedmean", vectors, **{"trim-beta": 0.2})
    np.testing.assert_allclose(result, stats.trim_mean(np.stack(vectors), 0.2, axis=0), rtol=1e-5)


def test_bulyan_needs_4f_plus_3_and_otherwise_agrees_with_flwr() -> None:
    result, report = run("bulyan", crafted(honest=5, outliers=2))
    assert result is None and "4f+3" in str(report.details["skipped"])
    vectors = crafted(honest=9, outliers=2)
    result, report = run("bulyan", vectors, **{"num-clients": 12})
    assert report.rejected == []
    np.testing.assert_allclose(result, flwr_reference(Bulyan(num_malicious_nodes=2), vectors), rtol=1e-5)


def test_flame_excludes_the_planted_outliers_and_clips_to_the_median_norm() -> None:
    vectors = crafted()
    result, report = run("flame", vectors, **{"flame-noise": 0.0})
    assert sorted(report.excluded) == [6, 7]
    bound = np.median([np.linalg.norm(v) for v in vectors])
    clipped = [v * min(1.0, bound / np.linalg.norm(v)) for v in vectors[:6]]
    np.testing.assert_allclose(result, np.mean(clipped, axis=0), rtol=1e-5)


def test_too_few_updates_to_filter_are_aggregated_unfiltered_and_said_so() -> None:
    """Two updates: FLAME's clustering (like CLIP-Fed's robust z) cannot judge them; the round is
    recorded as unfiltered, the table's status says so, and ``clipfed run`` warns before the run."""
    from clipfed.checks import few_updates_note
    from clipfed.runs.results import run_status

    _, report = run("flame", crafted(honest=1, outliers=1), **{"flame-noise": 0.0})
    assert report.excluded == [] and "needs >= 3 updates, got 2" in report.details["unfiltered"]
    entry = {"round": 1, "defense": report.details}
    assert run_status({"status": "completed", "rounds": [entry]}) == \
        "completed, NEVER FILTERED (too few updates a round)"
    assert run_status({"status": "completed", "rounds": [entry, {"round": 2, "defense": {}}]}) == \
        "completed, unfiltered in 1/2 rounds (too few updates)"
    _, report = run("flame", crafted(), **{"flame-noise": 0.0})
    assert "unfiltered" not in report.details

    two = {"num-clients": 2, "num-malicious": 1}
    for defense in ("flame", "clipfed"):
        note = few_updates_note(RunConfig.from_flower({**two, "defense": defense}))
        assert note is not None and "samples 2 a round" in note and ">= 3" in note
    for quiet in ({**two, "defense": "clipfed", "clipfed-pre": False}, {**two, "defense": "teacher-only"},
                  {**two, "defense": "fedavg"}, {"num-clients": 20, "fraction-train": 0.5, "defense": "clipfed"}):
        assert few_updates_note(RunConfig.from_flower(quiet)) is None, quiet


def test_fltrust_weights_are_relu_cos_and_updates_take_the_root_norm() -> None:
    root = torch.tensor([1.0, 0.0, 0.0])
    updates = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [-3.0, 0.0, 0.0]])
    trust = fltrust_weights(updates, root)
    torch.testing.assert_close(trust, torch.tensor([1.0, 2**-0.5, 0.0]))
    aggregate, _ = fltrust_aggregate(updates, root)
    expected = (1.0 * torch.tensor([1.0, 0, 0]) + 2**-0.5 * torch.tensor([2**-0.5, 2**-0.5, 0])) / (1 + 2**-0.5)
    torch.testing.assert_close(aggregate, expected)


def test_rlr_flips_the_learning_rate_exactly_where_agreement_is_low() -> None:
    updates = torch.tensor([[1.0, 1.0, -1.0, 0.5], [1.0, -1.0, -1.0, 0.5], [1.0, 1.0, 1.0, -0.5],
                            [1.0, 1.0, -1.0, 0.5]])
    rates = rlr_learning_rates(updates, threshold=3)  # |sum of signs| = 4, 2, 2, 2
    assert rates.tolist() == [1.0, -1.0, -1.0, -1.0]
    padded = [np.pad(u.numpy(), (0, DIM - 4)) for u in updates]
    result, report = run("rlr", padded, **{"rlr-threshold": 3})
    assert report.excluded == []
    # the mean update is [1, .5, -.5, .25]; flipped where agreement < 3
    np.testing.assert_allclose(result[:4], [1.0, -0.5, 0.5, -0.25], rtol=1e-6)


def test_foolsgold_down_weights_near_identical_sybils() -> None:
    rng = np.random.default_rng(0)
    honest = [np.eye(DIM)[i] + 0.05 * rng.standard_normal(DIM) for i in range(4)]  # diverse
    sybils = [np.eye(DIM)[5] + 0.001 * rng.standard_normal(DIM) for _ in range(3)]  # one objective
    weights = foolsgold_weights(torch.tensor(np.stack(honest + sybils)))
    assert weights[4:].max() < 0.1 < weights[:4].min()
    _, report = run("foolsgold", [v.astype(np.float32) for v in honest + sybils])
    assert set(report.excluded) >= {4, 5, 6} and not set(report.excluded) & {0, 1, 2, 3}


def test_norm_clipping_weak_dp_and_crfl() -> None:
    vectors = [np.full(DIM, 3.0, dtype=np.float32), np.full(DIM, 0.1, dtype=np.float32)]
    result, _ = run("normclip", vectors, **{"clip-norm": 1.0})
    clipped = vectors[0] / np.linalg.norm(vectors[0])
    np.testing.assert_allclose(result, (clipped + vectors[1]) / 2, rtol=1e-5)
    noisy, _ = run("weakdp", vectors, **{"clip-norm": 1.0, "dp-noise": 0.5})
    assert not np.allclose(noisy, result) and np.abs(noisy - result).max() < 5
    base = np.full(DIM, 10.0, dtype=np.float32)
    smoothed, _ = run("crfl", vectors, base=base, **{"crfl-clip": 5.0, "crfl-noise": 0.0})
    assert np.linalg.norm(base + smoothed) == pytest.approx(5.0, rel=1e-5)


def test_configure_train_records_the_global_model() -> None:
    from test_strategy import FakeGrid

    strategy = create_defense(cfg(defense="flame", **{"num-clients": 4, "num-malicious": 1}))
    arrays = arrays_of({"w": np.ones(DIM, dtype=np.float32)})
    list(strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid({10 + p: p for p in range(4)})))
    assert strategy.global_arrays is arrays
