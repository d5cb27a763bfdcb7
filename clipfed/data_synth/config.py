"""``SynthConfig``: a server dataset's recipe. With the digests of the teacher's weights and of the
input images it determines the artifact's content, and so its id (``content_hash``)."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from clipfed.config import DEVICE_PATTERN
from clipfed.teacher import TeacherSpec
from clipfed.trigger_like import DEFAULT_RECIPE, MixKind, TriggerLikeRecipe

PIPELINE_VERSION = 2  # 2: the id covers teacher weights and inputs


def _sha256_json(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpenAICaptionConfig(_Strict):
    """An OpenAI-compatible chat endpoint (hosted API, or a local vLLM/Ollama serving a VLM)."""

    base_url: str = Field("", description="empty: $OPENAI_BASE_URL, else the OpenAI API")
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0)
    temperature: float = Field(1.0, ge=0)


class CaptionConfig(_Strict):
    backend: Literal["template", "openai"] = "template"
    per_class: int = Field(60, ge=1)
    openai: OpenAICaptionConfig = OpenAICaptionConfig()


class PoolConfig(_Strict):
    """Unlabelled public images: the held-out CIFAR pool, an npz, a folder, or a torchvision set."""

    source: str = Field("public-pool", description="public-pool | PATH.npz | DIR | torchvision:NAME")
    public_pool_fraction: float = Field(0.1, ge=0.0, lt=0.9)
    download: bool = False


class DiffusersConfig(_Strict):
    model: str = Field("", description="a diffusers model id or a local pipeline folder")
    steps: int = Field(25, ge=1)
    guidance: float = Field(7.5, ge=0)
    size: int = Field(256, ge=8)
    per_class: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="auto | cpu | cuda | cuda:N")


class ImageConfig(_Strict):
    backend: Literal["pool", "diffusers"] = "pool"
    pool: PoolConfig = PoolConfig()
    diffusers: DiffusersConfig = DiffusersConfig()


class FilterConfig(_Strict):
    threshold: float = Field(0.3, ge=0.0, le=1.0, description="min teacher probability of the class")
    balance: Literal["none", "median", "min"] = Field(
        "median", description="cap every class at the median (or min) class count")
    max_per_class: int = Field(0, ge=0, description="0: no cap beyond balancing")


class AugmentConfig(_Strict):
    """Trigger-like augmentations; every augmented copy keeps its clean label. The defaults are
    ``clipfed.trigger_like.DEFAULT_RECIPE``, the public recipe an adaptive attacker also reads."""

    enabled: bool = True
    copies: int = Field(DEFAULT_RECIPE.copies, ge=0, description="augmented copies per clean image")
    mix: dict[MixKind, float] = dict(DEFAULT_RECIPE.mix)
    patch_size: tuple[int, int] = DEFAULT_RECIPE.patch_size
    blend_alpha: tuple[float, float] = DEFAULT_RECIPE.blend_alpha
    freq_band: tuple[float, float] = Field(DEFAULT_RECIPE.freq_band, description="normalised DCT radius range")
    freq_strength: float = Field(DEFAULT_RECIPE.freq_strength, gt=0,
                                 description="x the clean set's mean band amplitude")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for name in ("patch_size", "blend_alpha", "freq_band"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"augment.{name}={(low, high)}: need 0 <= low <= high")
        if self.enabled and self.copies and not any(w > 0 for w in self.mix.values()):
            raise ValueError("augment.mix: at least one of patch, blend, freq needs a weight > 0")
        return self

    def recipe(self) -> TriggerLikeRecipe:
        """The copies' recipe (``enabled`` is this stage's switch, not part of it)."""
        return TriggerLikeRecipe(self.copies, dict(self.mix), self.patch_size, self.blend_alpha, self.freq_band,
                                 self.freq_strength)


class SynthConfig(_Strict):
    """A server dataset's full recipe. Same config, same bytes."""

    seed: int = Field(0, ge=0)
    dataset: Literal["cifar10"] = "cifar10"
    data_dir: str = ""
    captions: CaptionConfig = CaptionConfig()
    images: ImageConfig = ImageConfig()
    filter: FilterConfig = FilterConfig()
    augment: AugmentConfig = AugmentConfig()
    teacher: TeacherSpec = TeacherSpec()
    threads: int = Field(2, ge=1, description="torch threads; fixed so floats are reproducible")

    def _payload(self) -> dict[str, Any]:
        payload = self.model_dump(mode="json", exclude={"data_dir"})  # where the data is, not what
        payload["pipeline_version"] = PIPELINE_VERSION
        return payload

    def recipe_hash(self) -> str:
        """Hash of the recipe alone: what a client asks the service for. It does not pin the
        content: the same recipe with other teacher weights or input images gives other data."""
        return _sha256_json(self._payload())

    def content_hash(self, teacher_weights: str, inputs: str) -> str:
        """The artifact's id: the recipe plus the digests of what else decides the bytes, the
        teacher's weights (``Teacher.weights_digest``) and the input images (``input_digest``)."""
        return _sha256_json({**self._payload(), "teacher_weights": teacher_weights, "inputs": inputs})

    @classmethod
    def from_file(cls, path: str | Path) -> SynthConfig:
        """Read a TOML or JSON recipe; errors name the offending key."""
        text = Path(path).read_text()
        raw = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"invalid synth config {path}: {problems}") from None
