"""Stage 1: many diverse captions per class, from a template grammar or a multimodal LLM.

``template`` is offline and deterministic: class-specific subjects and details crossed with
viewpoints, settings, lighting and colours. ``openai`` asks any OpenAI-compatible chat endpoint,
validates the reply (a JSON list of strings that mention the class), retries, and caches each
answer on disk so that a rebuild asks nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from clipfed.data.cifar import cache_dir
from clipfed.data_synth.config import CaptionConfig, OpenAICaptionConfig
from clipfed.registry import Registry
from clipfed.streams import Stream, stream_rng

CaptionBackend = Callable[[Sequence[str], CaptionConfig, int], dict[int, list[str]]]
CAPTIONS: Registry[CaptionBackend] = Registry("caption backend", {
    "openai": (__name__, "any OpenAI-compatible chat endpoint (vLLM, Ollama, hosted); cached"),
    "template": (__name__, "offline grammar over class-specific subjects, views and settings"),
})

SUBJECTS: dict[str, tuple[str, ...]] = {
    "airplane": ("a passenger jet", "a small propeller plane", "a fighter jet", "an airliner", "a seaplane"),
    "automobile": ("a red sedan", "a compact hatchback", "a sports car", "a family car", "a vintage car"),
    "bird": ("a small songbird", "a parrot", "a sparrow", "an ostrich", "a blue jay"),
    "cat": ("a tabby cat", "a black cat", "a fluffy kitten", "a siamese cat", "a ginger cat"),
    "deer": ("a white-tailed deer", "a young fawn", "a stag with antlers", "a roe deer", "an elk"),
    "dog": ("a golden retriever", "a small terrier", "a puppy", "a german shepherd", "a beagle"),
    "frog": ("a green tree frog", "a brown toad", "a bullfrog", "a small frog", "a spotted frog"),
    "horse": ("a brown horse", "a white stallion", "a pony", "a racehorse", "a black mare"),
    "ship": ("a cargo ship", "a cruise liner", "a sailing ship", "a fishing boat", "a tanker"),
    "truck": ("a fire truck", "a delivery truck", "a dump truck", "a pickup truck", "a semi-trailer truck"),
}
VIEWS = ("seen from the side", "seen from the front", "seen from above", "in close-up", "far away",
         "at an angle")
SETTINGS = ("on a sunny day", "at dusk", "in the rain", "against a plain background", "in a busy scene",
            "in snow", "under a clear sky", "in dim light")
STYLES = ("a photo of", "a blurry photo of", "a low-resolution photo of", "a bright photo of")


@CAPTIONS.register("template")
def template_captions(classes: Sequence[str], cfg: CaptionConfig, seed: int) -> dict[int, list[str]]:
    """``per_class`` distinct captions per class, chosen by ``seed`` from the grammar's product."""
    out: dict[int, list[str]] = {}
    for index, name in enumerate(classes):
        subjects = SUBJECTS.get(name, (f"a {name}",))
        grammar = [f"{style} {subject} {view}, {setting}."
                   for style, subject, view, setting in itertools.product(STYLES, subjects, VIEWS, SETTINGS)]
        if cfg.per_class > len(grammar):
            raise ValueError(f"captions.per_class={cfg.per_class}: the template grammar has only "
                             f"{len(grammar)} captions for {name!r}")
        rng = stream_rng(seed, Stream.CAPTIONS, index)  # not [seed, index]: streams 1-7 are taken
        out[index] = [grammar[i] for i in sorted(rng.choice(len(grammar), cfg.per_class, replace=False))]
    return out


class CaptionReplyError(ValueError):
    """The endpoint's reply was not a usable list of captions."""


def parse_caption_reply(text: str, class_name: str, minimum: int) -> list[str]:
    """Validate an LLM reply: a JSON list of distinct strings that each mention the class."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        items = json.loads(body)
    except json.JSONDecodeError as err:
        raise CaptionReplyError(f"reply is not JSON: {err}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise CaptionReplyError("reply is not a JSON list of strings")
    keywords = {class_name.lower(), *SUBJECT_WORDS.get(class_name, ())}
    kept = list(dict.fromkeys(i.strip() for i in items
                              if 3 <= len(i.split()) <= 60 and any(k in i.lower() for k in keywords)))
    if len(kept) < minimum:
        raise CaptionReplyError(f"only {len(kept)} valid captions for {class_name!r}, need {minimum}")
    return kept[:minimum]


SUBJECT_WORDS = {"automobile": ("car",), "airplane": ("plane", "jet", "aircraft"),
                 "ship": ("boat", "vessel"), "truck": ("lorry",)}


def _prompt(class_name: str, count: int) -> str:
    return (f"Write {count} different one-sentence descriptions of photographs of a {class_name}. "
            "Vary the pose, viewpoint, background, colour, lighting and setting. Every sentence must "
            f"mention the {class_name}. Reply with a JSON list of strings and nothing else.")


def _cache_file(settings: OpenAICaptionConfig, base_url: str, prompt: str) -> Path:
    key = json.dumps([base_url, settings.model, settings.temperature, prompt])
    return cache_dir() / "captions" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


@CAPTIONS.register("openai")
def openai_captions(classes: Sequence[str], cfg: CaptionConfig, seed: int) -> dict[int, list[str]]:
    from openai import OpenAI

    settings = cfg.openai
    base_url = settings.base_url or os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
    client = OpenAI(base_url=base_url, api_key=os.environ.get(settings.api_key_env, "not-needed"),
                    timeout=settings.timeout, max_retries=settings.retries)
    out: dict[int, list[str]] = {}
    for index, name in enumerate(classes):
        prompt = _prompt(name, cfg.per_class)
        cached = _cache_file(settings, base_url, prompt)
        if cached.exists():
            out[index] = json.loads(cached.read_text())
            continue
        last_error: Exception | None = None
        for _ in range(settings.retries + 1):
            reply = client.chat.completions.create(
                model=settings.model, temperature=settings.temperature, seed=seed,
                messages=[{"role": "user", "content": prompt}],
            )
            try:
                out[index] = parse_caption_reply(reply.choices[0].message.content or "", name, cfg.per_class)
                break
            except CaptionReplyError as err:
                last_error = err
        else:
            raise CaptionReplyError(f"{base_url} ({settings.model}) gave no usable captions for "
                                    f"{name!r} after {settings.retries + 1} tries: {last_error}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(out[index]))
    return out


def build_captions(classes: Sequence[str], cfg: CaptionConfig, seed: int) -> dict[int, list[str]]:
    return CAPTIONS.get(cfg.backend)(classes, cfg, seed)
