"""The way in to a ``RunConfig``: pydantic's rules, then the rules that need the registries.

``clipfed.config`` imports nothing from clipfed, so the rules that need a catalogue (a model,
attack, attack part or defense name) or another package (whether the split gives every client
images) live here. Everything that turns a Flower run config, a node config or command-line text
into a ``RunConfig`` calls ``load_run_config`` (a ClientApp: ``load_node_run_config``), which
reports every bad key in one ``ConfigError``: a bad ``model`` and a bad ``lr`` together.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from clipfed.attacks.registry import PARTS, list_attacks, resolve_parts
from clipfed.config import (
    FIELD_OF_KEY,
    KEY_OF_FIELD,
    LOCAL_DATA_KEY,
    NODE_IDENTITY_KEYS,
    NODE_KEYS,
    NUM_CLASSES,
    ConfigError,
    RunConfig,
    default_of,
    flip_source_problem,
    node_identity_problems,
)
from clipfed.models.registry import list_models

if TYPE_CHECKING:
    from clipfed.defense.registry import DefenseStrategy

# Train images per class before the public pool and the LT profile (CIFAR-10: 50,000 in 10 classes;
# CIFAR-10-LT subsamples the same split), so that split feasibility is known without the data.
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar10-lt": 5000}
# Keys only the ServerApp reads; it checks them before the first round, so a ClientApp need not
# (and does not load the defense catalogue, nor with it clipfed.defense).
SERVER_KEYS = ("defense",)
# Data parts whose trigger the attackers learn (``DataPoisoning.learns_trigger``), known here by name
# so that checking imports no part: the server re-derives them on the public pool.
LEARNED_TRIGGERS = ("a3fl", "f3ba")

_PATCH = ("patch-position", "patch-pattern")
_CLIPPED = ("defense:normclip", "defense:weakdp", "defense:crfl")
_CLIPFED = ("defense:clipfed", "defense:teacher-only")
# Run-config keys that only some attack parts or defenses read -> those components, as
# "<part key>:<name>" or "defense:<name>". Set away from its default where none of them runs, such a
# key changes nothing (a forgotten attack-training, the wrong defense): ``unused_keys`` says so.
# Components are counted by module: a key one class of a module reads counts for every component
# the module registers (krum's multikrum-m), which only ever lets a key through.
# tests/test_key_effect.py derives this table from the modules' sources and compares.
READERS: dict[str, tuple[str, ...]] = {
    "patch-size": ("attack-data:badnets", "attack-data:dba", "attack-data:f3ba"),
    **dict.fromkeys(_PATCH, ("attack-data:a3fl", "attack-data:badnets", "attack-data:dba", "attack-data:f3ba")),
    **dict.fromkeys(("blend-alpha", "blend-pattern"), ("attack-data:blended",)),
    "dba-parts": ("attack-data:dba",),
    **dict.fromkeys(("freq-psnr", "freq-band-low", "freq-band-high"), ("attack-data:frequency",)),
    "flip-source": ("attack-data:labelflip",),
    **dict.fromkeys(("a3fl-trigger-size", "a3fl-trigger-lr", "a3fl-outer-epochs", "a3fl-adv-epochs",
                     "a3fl-adv-every", "a3fl-adv-weight"), ("attack-data:a3fl",)),
    "f3ba-share": ("attack-data:f3ba",),
    **dict.fromkeys(("pgd-eps", "pgd-every"), ("attack-training:pgd",)),
    "neurotoxin-keep": ("attack-training:neurotoxin", "attack-update:neurotoxin"),
    "constrain-alpha": ("attack-training:constrain",),
    "aware-lambda": ("attack-training:clipfed-aware",),
    "boost-factor": ("attack-update:scaling",),
    "krum-f": ("defense:bulyan", "defense:krum", "defense:multikrum"),
    "multikrum-m": ("defense:krum", "defense:multikrum"),
    "trim-beta": ("defense:trimmedmean",),
    "flame-noise": ("defense:flame",),
    "fltrust-root-size": ("defense:fltrust",),
    "rlr-threshold": ("defense:rlr",),
    **dict.fromkeys(("clip-norm", "dp-noise", "crfl-clip", "crfl-noise"), _CLIPPED),
    **dict.fromkeys((k for k in FIELD_OF_KEY if k.startswith("clipfed-") and k != "clipfed-probe-size"), _CLIPFED),
    "clipfed-probe-size": ("attack-training:clipfed-aware", *_CLIPFED),
}
# Keys every attack reads, so the table above cannot name them: the malicious clients' poisoning
# share and training budget (read only when some client attacks: an attack, num-malicious > 0 and a
# defense under which clients train), the target (read by the clients and the server's ASR only
# under an attack; the attack window is read by every run's detection counts), and
# the server dataset's recipe, the teacher, its guard and the synthesis (read only for a defense
# whose ``needs_server_data`` is true: clipfed, teacher-only, fltrust).
ATTACKER_KEYS = ("poison-rate", "attack-local-steps", "attack-epochs", "attack-lr")
ATTACK_KEYS = ("target-label",)
SERVER_DATA_KEYS = tuple(k for k in FIELD_OF_KEY if k.startswith(("teacher", "synth-")))
_DEFAULT_DATASET: str = default_of("dataset")


def _defenses() -> list[str]:
    from clipfed.defense.registry import list_defenses  # late: only where the defense key is checked

    return list_defenses()


# Run-config keys whose value names a registered component -> the names allowed; "" in a part key
# means the shorthand's part.
NAMED: dict[str, Callable[[], list[str]]] = {
    "model": list_models,
    "attack": lambda: ["none", *list_attacks()],
    **{key: registry.names for key, registry in PARTS.items()},
    "defense": _defenses,
}


def _name_problems(values: Mapping[str, Any], skip: Collection[str]) -> list[str]:
    """Names no catalogue declares, from the raw values (so they come out with pydantic's problems
    even when other keys are invalid). Only given keys are looked up (every default is a declared
    name); a value of the wrong type is pydantic's to report."""
    given = {KEY_OF_FIELD.get(k, k): v for k, v in values.items()}  # RunConfig also takes field names
    problems = []
    for key, allowed in NAMED.items():
        value = given.get(key)
        if key in skip or not isinstance(value, str) or (key in PARTS and not value):
            continue
        if value not in (names := allowed()):
            own = "'' (the attack's own part), " if key in PARTS else ""
            problems.append(f"{key}: unknown value {value!r}; allowed: {own}{', '.join(names)}")
    if given.get("attack") == "none":
        problems += [f"{key}={given[key]!r} has no effect with attack='none'; allowed: '' or an attack"
                     for key in PARTS if given.get(key)]
    return problems


def _attack_problems(cfg: RunConfig) -> list[str]:
    """Rules of the data part the attack runs with (names already known to be declared)."""
    if cfg.attack == "none":
        return []
    data, _, _ = resolve_parts(cfg.attack, cfg.attack_data, cfg.attack_training, cfg.attack_update)
    problems = []
    if data == "labelflip" and cfg.flip_source == cfg.target_label:
        problems.append(flip_source_problem(cfg))
    if data in LEARNED_TRIGGERS and not cfg.public_pool_fraction:
        problems.append(f"attack-data={data!r} learns its trigger, which the server re-derives on "
                        "public-pool images to measure ASR; allowed: public-pool-fraction > 0")
    pixels = cfg.patch_size * cfg.patch_size
    if data == "dba" and cfg.dba_parts > pixels:  # DBA cuts the patch into dba-parts non-empty cells
        problems.append(f"dba-parts={cfg.dba_parts} exceeds the {pixels} pixels of a patch-size="
                        f"{cfg.patch_size} patch (every part needs one); allowed: 1..{pixels}")
    return problems


def unused_keys(cfg: RunConfig) -> list[str]:
    """Keys that nothing in this run reads (``unread_keys``) set away from their default, each as
    ``"key=value: read by ...; this run has ..."``.

    They are reported (the ServerApp logs them and writes them to result.json as ``unused_keys``;
    ``clipfed run`` prints them), not refused: one config file commonly holds the settings of
    several attacks and defenses, of which a run uses some. Such a key changes nothing in this run,
    and its config hash still counts it.
    """
    return [f"{key}={value!r}: {why}" for key, why in unread_keys(cfg).items()
            if (value := getattr(cfg, FIELD_OF_KEY[key])) != default_of(key)]


def unread_keys(cfg: RunConfig) -> dict[str, str]:
    """The keys no part of this run reads, whatever their value -> why: those that only some attack
    parts or defenses read (``READERS``) where none of those runs, the keys every attack reads
    (``ATTACKER_KEYS``, ``ATTACK_KEYS``) in a run without attackers, and the server dataset's keys
    (``SERVER_DATA_KEYS``) under a defense that builds none. Keys the run itself reads are not
    covered."""
    if cfg.attack == "none":
        chosen, attack = {f"defense:{cfg.defense}"}, "attack='none'"
    else:
        parts = resolve_parts(cfg.attack, cfg.attack_data, cfg.attack_training, cfg.attack_update)
        chosen = {f"{key}:{name}" for key, name in zip(PARTS, parts, strict=True)} | {f"defense:{cfg.defense}"}
        attack = f"attack={cfg.attack!r} (parts {'+'.join(parts)})"
    unread = {key: f"read by {', '.join(readers)}; this run has " + ", ".join(
        [*([attack] if any(r.startswith("attack") for r in readers) else []),
         *([f"defense={cfg.defense!r}"] if any(r.startswith("defense") for r in readers) else [])])
        for key, readers in READERS.items() if not chosen.intersection(readers)}
    attackers_train = cfg.attack_enabled and _defense(cfg.defense).trains_clients
    if not attackers_train:  # the training and update parts and the poisoning run in attacking clients only
        why = ("read by malicious clients; this run has none training (attack="
               f"{cfg.attack!r}, num-malicious={cfg.num_malicious}, defense={cfg.defense!r})")
        unread |= dict.fromkeys(ATTACKER_KEYS, why)
        unread |= {key: why for key, readers in READERS.items()
                   if all(r.startswith(("attack-training:", "attack-update:")) for r in readers)}
    if cfg.attack == "none":
        unread |= dict.fromkeys(ATTACK_KEYS, "read only under an attack; this run has attack='none'")
    if cfg.defense not in (builders := _server_data_defenses()):
        unread |= dict.fromkeys(SERVER_DATA_KEYS, f"read by the server dataset, which only {', '.join(builders)} "
                                f"build; this run has defense={cfg.defense!r}")
    return unread


def few_updates_note(cfg: RunConfig) -> str | None:
    """Why the defense's filter will judge no round, or None: it needs ``filter_minimum`` updates a
    round (CLIP-Fed's robust z, FLAME's clustering: 3) and the run samples fewer. Such a run is
    allowed (two test machines are a common first deployment); each round then records
    ``unfiltered`` in its ``defense`` details."""
    minimum = _defense(cfg.defense).filter_minimum(cfg)
    if cfg.clients_per_round >= minimum:
        return None
    return (f"defense={cfg.defense!r} filters a round's updates only when it gets >= {minimum}; num-clients="
            f"{cfg.num_clients} x fraction-train={cfg.fraction_train} samples {cfg.clients_per_round} a round, so "
            f"every update is aggregated unfiltered; allowed: at least {minimum} clients a round")


def _defense(name: str) -> type[DefenseStrategy]:
    from clipfed.defense.registry import DEFENSES  # late: only where the defense key is checked

    return DEFENSES.get(name)


def _server_data_defenses() -> list[str]:
    from clipfed.defense.registry import DEFENSES  # late: only where the defense key is checked

    return [name for name in DEFENSES.names() if DEFENSES.get(name).needs_server_data]


def _split_problems(cfg: RunConfig) -> list[str]:
    """A split whose clients cannot each get their share, found from the sizes alone (no data)."""
    from clipfed.data.partition import client_class_counts  # late: numpy only when checking

    images = int(client_class_counts([TRAIN_PER_CLASS[cfg.dataset]] * cfg.num_classes, cfg).sum())
    where = (f"the {images} {cfg.dataset} train images left to clients after the public pool "
             f"(public-pool-fraction={cfg.public_pool_fraction}"
             + (f", imbalance-factor={cfg.imbalance_factor})" if cfg.dataset == "cifar10-lt" else ")"))
    if cfg.partition == "dirichlet" and cfg.num_clients * cfg.min_partition_size > images:
        return [f"min-partition-size={cfg.min_partition_size} x num-clients={cfg.num_clients} "
                f"= {cfg.num_clients * cfg.min_partition_size} exceeds {where}; allowed: "
                f"min-partition-size <= {images // cfg.num_clients}"]
    if cfg.num_clients > images:
        return [f"num-clients={cfg.num_clients} exceeds {where}, so some clients get no "
                f"image; allowed: num-clients <= {images}"]
    return []


def load_run_config(values: Mapping[str, Any]) -> RunConfig:
    """``values`` (Flower's hyphenated keys; absent keys take their defaults) as a ``RunConfig``,
    or one ``ConfigError`` listing every problem: pydantic's and the names' at once, then (once
    both pass) the rules of the attack parts and the split."""
    return _load(values, skip=())


def _load(values: Mapping[str, Any], skip: Collection[str]) -> RunConfig:
    problems = _name_problems(values, skip)
    try:
        cfg = RunConfig.from_flower(values)
    except ConfigError as err:
        raise ConfigError.listing([*err.problems, *problems]) from None
    if not problems:
        problems = _attack_problems(cfg)
    problems += _split_problems(cfg)
    if problems:
        raise ConfigError.listing(problems)
    return cfg


def _run_config_overrides(node: Mapping[str, Any]) -> dict[str, Any]:
    """The run-config keys a node config sets for itself (every node key but ``local-data-dir``)."""
    return {k: v for k, v in node.items() if k in NODE_KEYS and k != LOCAL_DATA_KEY}


def node_config_problems(node: Mapping[str, Any], dataset: str = _DEFAULT_DATASET) -> list[str]:
    """Why a SuperNode's node config cannot be used (unknown keys, bad values, a ``local-data-dir``
    that is missing, empty or has a folder that is no class of ``dataset``), or [].

    Checked by ``clipfed deploy supernode`` before the node starts (against the default dataset's
    classes: no run is known yet) and by the ClientApp (against the run's), so that a typo
    (``posion-rate``) or a bad folder is refused before any training instead of silently running
    with the run's value.
    """
    problems = [f"{key}: unknown node-config key; allowed: {', '.join((*NODE_IDENTITY_KEYS, *NODE_KEYS))}"
                for key in node if key not in NODE_KEYS and key not in NODE_IDENTITY_KEYS]
    problems += node_identity_problems(node)
    if LOCAL_DATA_KEY in node and dataset in NUM_CLASSES:  # an unknown dataset: the run config's problem
        from clipfed.data.local import local_folder_problems  # late: torchvision only for such a node

        problems += local_folder_problems(node[LOCAL_DATA_KEY], dataset)
    overrides = _run_config_overrides(node)
    if overrides:
        try:
            load_run_config(overrides)
        except ConfigError as err:
            problems += err.problems
    return problems


def load_node_run_config(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> RunConfig:
    """A ClientApp's config: the run config with what the node's ``--node-config`` sets for itself
    on top (a bad node-config key is refused, never silently ignored)."""
    dataset = str(run_config.get("dataset", _DEFAULT_DATASET))
    if problems := node_config_problems(node_config, dataset):
        raise ConfigError.listing(problems, "invalid node config:")
    overrides = _run_config_overrides(node_config)
    return _load({**run_config, **overrides}, skip=SERVER_KEYS)
