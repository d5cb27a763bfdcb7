"""``clipfed synth serve``: the synthesis service over HTTP (FastAPI).

POST /builds with a SynthConfig (JSON) -> the build's id (the recipe's hash) and status;
GET /builds/{recipe} -> queued | running | done (with ``content_hash``, the artifact's id) |
failed (with the error); GET /artifacts/{content_hash} -> the artifact as .tar.gz. The artifact
id depends on the teacher's weights, which only the service loads, so it is known once a build
is done. Builds run one at a time in a worker thread; a build whose artifact is already in the
store (every request checks again, as the teacher's weights may have changed) loads the teacher,
finds the artifact and makes no forward pass.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from clipfed.data_synth.artifact import artifact_name, pack_artifact, verify_artifact
from clipfed.data_synth.config import SynthConfig
from clipfed.data_synth.pipeline import build_server_dataset

LOG = logging.getLogger("clipfed.synth.service")


class BuildQueue:
    """Build status by recipe hash, and a single worker lock."""

    def __init__(self, store: Path, data_dir: str) -> None:
        self.store = store
        self.data_dir = data_dir
        self.status: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.worker_lock = threading.Lock()

    def submit(self, cfg: SynthConfig) -> dict[str, Any]:
        if not cfg.data_dir and self.data_dir:
            cfg = cfg.model_copy(update={"data_dir": self.data_dir})
        key = cfg.recipe_hash()
        with self.lock:  # a finished recipe is checked again: its teacher's weights may have changed
            if self.status.get(key, {}).get("status") not in ("queued", "running"):
                self.status[key] = {"id": key, "status": "queued"}
                threading.Thread(target=self._build, args=(key, cfg), daemon=True).start()
            return dict(self.status[key])

    def _build(self, key: str, cfg: SynthConfig) -> None:
        with self.worker_lock:
            self._set(key, status="running")
            try:
                result = build_server_dataset(cfg, self.store)
                self._set(key, status="done", content_hash=result.dataset.manifest["content_hash"],
                          cache_hit=result.cache_hit, seconds=result.seconds)
            except Exception as err:  # reported to the client; the service stays up
                LOG.exception("build %s failed", key[:16])
                self._set(key, status="failed", error=f"{type(err).__name__}: {err}")

    def _set(self, key: str, **fields: Any) -> None:
        with self.lock:
            self.status[key] = {**self.status.get(key, {"id": key}), **fields}

    def get(self, key: str) -> dict[str, Any]:
        with self.lock:
            if key in self.status:
                return dict(self.status[key])
        raise HTTPException(404, f"no build {key}")


def create_app(store: Path, data_dir: str = "") -> FastAPI:
    app = FastAPI(title="clipfed synthesis service")
    queue = BuildQueue(store, data_dir)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/builds")
    def submit(cfg: SynthConfig) -> dict[str, Any]:
        return queue.submit(cfg)

    @app.get("/builds/{key}")
    def status(key: str) -> dict[str, Any]:
        return queue.get(key)

    @app.get("/artifacts/{content_hash}")
    def download(content_hash: str) -> Response:
        path = store / artifact_name(content_hash)
        if not path.exists() or verify_artifact(path)["content_hash"] != content_hash:
            raise HTTPException(404, f"no artifact {content_hash}")
        return Response(pack_artifact(path), media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{path.name}.tar.gz"'})

    return app
