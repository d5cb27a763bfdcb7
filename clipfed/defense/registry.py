"""The defense registry: ``create_defense(cfg, ...)`` builds the strategy ``cfg.defense`` names.

The catalogue below is where a defense is declared (name, module, description); its module
registers the strategy with ``@DEFENSES.register(name)`` and is imported on first use, so listing
defenses imports no torch, scikit-learn or flwr strategy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.config import RunConfig
    from clipfed.defense.base import DefenseStrategy

DEFENSES: Registry[type[DefenseStrategy]] = Registry("defense", {
    "bulyan": ("clipfed.defense.bulyan", "Bulyan: Multi-Krum then trimmed mean around the median (krum-f)"),
    "clipfed": ("clipfed.defense.clipfed", "CLIP-Fed: teacher-guided pre-aggregation filter + CLIP alignment"),
    "crfl": ("clipfed.defense.clipping",
             "CRFL: clip the global model norm (crfl-clip), add smoothing noise (crfl-noise)"),
    "fedavg": ("clipfed.defense.fedavg", "FedAvg, no defense (example-weighted mean of all updates)"),
    "flame": ("clipfed.defense.flame",
              "FLAME: HDBSCAN cosine clustering, median-norm clipping, noise (flame-noise)"),
    "fltrust": ("clipfed.defense.fltrust", "FLTrust: trust = ReLU(cos) to a server root update (server dataset)"),
    "foolsgold": ("clipfed.defense.foolsgold", "FoolsGold: down-weight clients whose update histories look alike"),
    "krum": ("clipfed.defense.krum", "Krum: the single update closest to its n-f-2 neighbours (krum-f)"),
    "median": ("clipfed.defense.median", "coordinate-wise median (flwr FedMedian)"),
    "multikrum": ("clipfed.defense.krum", "Multi-Krum: average of the m best Krum scores (krum-f, multikrum-m)"),
    "normclip": ("clipfed.defense.clipping", "norm-difference clipping of every update to clip-norm"),
    "rlr": ("clipfed.defense.rlr",
            "Robust Learning Rate: flip the server lr where sign agreement < rlr-threshold"),
    "teacher-only": ("clipfed.defense.clipfed", "no clients: the server distils the teacher on its own dataset"),
    "trimmedmean": ("clipfed.defense.trimmedmean", "coordinate-wise trimmed mean (flwr FedTrimmedAvg, trim-beta)"),
    "weakdp": ("clipfed.defense.clipping", "weak DP: norm clipping (clip-norm) plus Gaussian noise (dp-noise)"),
})


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def create_defense(cfg: RunConfig, **context: Any) -> DefenseStrategy:
    """The strategy for ``cfg.defense``; ``context`` carries server-side helpers (sampler, reporter,
    and the server dataset and teacher for defenses whose ``needs_server_data`` is true)."""
    return DEFENSES.get(cfg.defense)(cfg, **context)
