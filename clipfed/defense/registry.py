"""The defense registry: ``create_defense(cfg, ...)`` builds the strategy ``cfg.defense`` names.

The catalogue below is where a defense is declared (name, module, description); its module
registers the strategy with ``@DEFENSES.register(name)`` and is imported on first use, so listing
defenses imports no torch, scikit-learn or flwr strategy. What a name resolves to is a
``DefenseStrategy`` subclass (``clipfed.defense.strategy``); ``tests/test_every_model.py`` runs
every declared defense with every model, and ``tests/test_pinned_behaviour.py`` pins each one's
aggregate.

The rule each defense follows:

- ``fedavg``: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017.
- ``krum``, ``multikrum``: Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent", NeurIPS 2017 (flwr's ``select_multikrum``).
- ``bulyan``: El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
  ICML 2018 (flwr's ``Bulyan``).
- ``median``, ``trimmedmean``: Yin et al., "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates", ICML 2018 (flwr's ``FedMedian``, ``FedTrimmedAvg``).
- ``normclip``, ``weakdp``: Sun et al., "Can You Really Backdoor Federated Learning?", 2019.
- ``crfl``: Xie et al., "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks",
  ICML 2021.
- ``flame``: Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022.
- ``fltrust``: Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust
  Bootstrapping", NDSS 2021.
- ``foolsgold``: Fung et al., "The Limitations of Federated Learning in Sybil Settings", RAID 2020.
- ``rlr``: Ozdayi et al., "Defending against Backdoors in Federated Learning with Robust
  Learning Rate", AAAI 2021.
- ``clipfed``: CLIP-Fed (Gai et al. 2025), as METHOD.md describes it; ``teacher-only`` is this
  project's control row (the server distils the teacher, no client trains).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.config import RunConfig
    from clipfed.defense.strategy import DefenseStrategy

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
    """Declared defense names matching ``pattern`` (an ``fnmatch`` glob), sorted; imports nothing."""
    return DEFENSES.names(pattern)


def create_defense(cfg: RunConfig, **context: Any) -> DefenseStrategy:
    """The strategy ``cfg.defense`` names, built as ``DEFENSES.get(cfg.defense)(cfg, **context)``.

    Args:
        cfg: The validated run config; the strategy reads its keys (``fraction-train``,
            ``krum-f``, ...) from it.
        **context: Keyword arguments passed on to the strategy's constructor as they are:
            ``sampler`` (a ``PartitionSampler``), ``on_report`` (called with each round's
            ``AggregationReport``), and ``server_data`` (a ``ServerDataset``), which a defense
            whose ``needs_server_data`` is true requires and any other refuses (``TypeError``).

    Returns:
        A new ``DefenseStrategy``, ready for ``start``.

    Raises:
        KeyError: ``cfg.defense`` is not declared.
        TypeError: ``context`` does not fit the strategy's constructor.
    """
    return DEFENSES.get(cfg.defense)(cfg, **context)
