"""The attack registries: three part registries and the shorthands that name a triple of parts.

``create_attack(cfg)`` builds the attack ``cfg.attack`` names, with any part that
``attack-data``, ``attack-training`` or ``attack-update`` names instead of the shorthand's. Each
part is declared in its registry's catalogue below (name, module, description); its module
registers the factory with ``@DATA_PARTS.register(name)`` (or ``TRAINING_PARTS``,
``UPDATE_PARTS``) and is imported on first use, so listing attacks imports no torch.

Adding a training-time attack: one module under ``clipfed/attacks/training/`` with its part and
factory, one catalogue line here (and a ``SHORTHANDS`` line if it deserves a name, with its pin in
``tests/pinned_behaviour.json``), its own keys in ``RunConfig`` and ``pyproject.toml`` (plus
``NODE_KEYS`` if a malicious node may set them), and its test.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any, NamedTuple

from clipfed.registry import Registry

if TYPE_CHECKING:
    from clipfed.attacks.base import Attack, DataPoisoning, TrainingPart, UpdatePart
    from clipfed.config import RunConfig

DATA_PARTS: Registry[Callable[[RunConfig], DataPoisoning]] = Registry("attack-data part", {
    "badnets": ("clipfed.attacks.data.badnets", "BadNets patch trigger (patch-size, patch-position, patch-pattern)"),
    "blended": ("clipfed.attacks.data.blended", "Blended full-image trigger (blend-alpha, blend-pattern)"),
    "dba": ("clipfed.attacks.data.dba", "distributed backdoor: each attacker stamps one part of the patch (dba-parts)"),
    "frequency": ("clipfed.attacks.data.frequency",
                  "imperceptible mid/high-DCT-band trigger (freq-psnr, freq-band-*)"),
    "labelflip": ("clipfed.attacks.data.labelflip", "label flipping to the target, no trigger (flip-source)"),
    "a3fl": ("clipfed.attacks.data.a3fl",
             "A3FL: patch trigger optimised each round against the global model and an unlearned copy (a3fl-*)"),
    "f3ba": ("clipfed.attacks.data.f3ba",
             "F3BA: trigger co-optimised with sign flips of low-importance first-layer weights (f3ba-share)"),
})
TRAINING_PARTS: Registry[Callable[[RunConfig], TrainingPart]] = Registry("attack-training part", {
    "f3ba": ("clipfed.attacks.training.f3ba",
             "SGD holding the first-layer sign flips the f3ba data part planned (plain SGD without it)"),
    "sgd": ("clipfed.attacks.training.sgd",
            "plain SGD on the poisoned shard, with the attacker's own attack-local-steps, attack-epochs, attack-lr"),
    "pgd": ("clipfed.attacks.training.pgd",
            "SGD projected every pgd-every steps onto the L2 ball of radius pgd-eps around the global model"),
    "neurotoxin": ("clipfed.attacks.training.neurotoxin",
                   "every SGD step restricted to the coordinates of the smallest gradient of the "
                   "global model on the attacker's clean data (neurotoxin-keep)"),
    "constrain": ("clipfed.attacks.training.constrain",
                  "loss constrain-alpha * CE + (1 - constrain-alpha) * L2 distance to the global model"),
    "clipfed-aware": ("clipfed.attacks.training.clipfed_aware",
                      "KL + prototype term keeping its own CLIP-Fed-style probe close to the global model "
                      "(aware-lambda); update norm capped at an honest update's"),
})
UPDATE_PARTS: Registry[Callable[[RunConfig], UpdatePart]] = Registry("attack-update part", {
    "none": ("clipfed.attacks.update.identity", "the trained parameters, unchanged"),
    "scaling": ("clipfed.attacks.update.scaling", "model replacement: the update boosted by boost-factor"),
    "neurotoxin": ("clipfed.attacks.update.neurotoxin",
                   "the final update restricted to the coordinates the last global step it saw changed least, "
                   "once; unmasked in a node's first turn (neurotoxin-keep); the shorthand masks every step"),
})
# The run-config key that picks each part, and its registry.
PARTS: dict[str, Registry[Any]] = {
    "attack-data": DATA_PARTS, "attack-training": TRAINING_PARTS, "attack-update": UPDATE_PARTS,
}


class Shorthand(NamedTuple):
    """An attack name (``attack=NAME``) for a triple of parts, and what ``clipfed list`` says of it."""

    data: str
    training: str
    update: str
    description: str


SHORTHANDS: dict[str, Shorthand] = {
    "a3fl": Shorthand("a3fl", "sgd", "none", DATA_PARTS.describe()["a3fl"]),
    "f3ba": Shorthand("f3ba", "f3ba", "none", "F3BA: sign flips of the f3ba-share least important first-layer "
                      "weights, the trigger co-optimised to activate them"),
    "badnets": Shorthand("badnets", "sgd", "none", DATA_PARTS.describe()["badnets"]),
    "blended": Shorthand("blended", "sgd", "none", DATA_PARTS.describe()["blended"]),
    "dba": Shorthand("dba", "sgd", "none", DATA_PARTS.describe()["dba"]),
    "frequency": Shorthand("frequency", "sgd", "none", DATA_PARTS.describe()["frequency"]),
    "labelflip": Shorthand("labelflip", "sgd", "none", DATA_PARTS.describe()["labelflip"]),
    "scaling": Shorthand("badnets", "sgd", "scaling", "model replacement: BadNets update boosted by boost-factor"),
    "pgd": Shorthand("badnets", "pgd", "none", "BadNets trained within an L2 ball around the global model "
                     "(pgd-eps, pgd-every); add attack-update='scaling' for model replacement"),
    "neurotoxin": Shorthand("badnets", "neurotoxin", "none",
                            "BadNets trained with every step restricted to rarely-updated coordinates "
                            "(neurotoxin-keep)"),
    "constrain-scale": Shorthand("badnets", "constrain", "scaling",
                                 "constrain-and-scale: BadNets trained close to the global model "
                                 "(constrain-alpha), then boosted by boost-factor"),
    "clipfed-aware": Shorthand("badnets", "clipfed-aware", "none",
                               "BadNets evading CLIP-Fed's probe signals on its own probe (aware-lambda), "
                               "norm capped at an honest update's"),
}


class Shorthands:
    """The shorthands as ``clipfed list`` reads a registry: names and descriptions, no imports."""

    kind = "attack"

    def names(self, pattern: str = "*") -> list[str]:
        """Shorthand names matching the glob ``pattern``, sorted."""
        return sorted(n for n in SHORTHANDS if fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        """Name -> description (with its parts), sorted by name."""
        return {n: f"{SHORTHANDS[n].description} [{'+'.join(SHORTHANDS[n][:3])}]" for n in self.names()}


ATTACKS = Shorthands()


def list_attacks(pattern: str = "*") -> list[str]:
    """The attack shorthands matching ``pattern`` (``attack=NAME`` also accepts ``none``)."""
    return ATTACKS.names(pattern)


def resolve_parts(attack: str, data: str = "", training: str = "", update: str = "") -> tuple[str, str, str]:
    """The (data, training, update) part names an attack runs with: the shorthand's, each replaced
    by the part key that names one. Raises ``KeyError`` for an unknown shorthand (imports nothing)."""
    if attack not in SHORTHANDS:
        raise KeyError(f"unknown attack {attack!r}; allowed: none, {', '.join(list_attacks())}")
    short = SHORTHANDS[attack]
    return data or short.data, training or short.training, update or short.update


def create_attack(cfg: RunConfig) -> Attack | None:
    """The configured attack, or None for ``attack=none``.

    Raises:
        KeyError: a shorthand or part name that no registry declares.
    """
    if cfg.attack == "none":
        return None
    from clipfed.attacks.base import Attack  # late: numpy and the parts load only when attacking

    names = resolve_parts(cfg.attack, cfg.attack_data, cfg.attack_training, cfg.attack_update)
    return Attack(cfg.attack, DATA_PARTS.get(names[0])(cfg), TRAINING_PARTS.get(names[1])(cfg),
                  UPDATE_PARTS.get(names[2])(cfg), names)
