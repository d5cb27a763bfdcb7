"""The server-side data-synthesis service: a clean, trigger-augmented server dataset built from
captions, public or generated images and a teacher, without any client sample (METHOD.md part 2).
"""

from __future__ import annotations

from clipfed.data_synth.artifact import (
           ArtifactIntegrityError,
           ServerDataset,
           load_artifact,
)
from clipfed.data_synth.config import SynthConfig
from clipfed.data_synth.pipeline import BuildResult, build_server_dataset

__all__ = ["ArtifactIntegrityError", "BuildResult", "ServerDataset", "SynthConfig",
           "build_server_dataset", "load_artifact"]
