"""Router artifacts: one file per trained router, its version, training data reference and metrics.

Format (`pitstop-router/1`): a joblib file holding {"manifest": {...}, "router": LearnedRouter}, and a
JSON copy of the manifest beside it (`<file>.json`) for people and tools. The manifest names the
family, models, feature spec, the training data (data set, split, each source file's sha256; no
training rows are stored) and the metrics measured at training time. Files are written to a
temporary name and renamed into place, so a watcher never reads half a file.

Hot reload: `artifact_fingerprint(path)` is cheap (stat only) and changes whenever the file is
replaced; `load_router(path)` returns a router whose `version` is the manifest's version (creation
time + content hash), so a reload that found a new file is visible in every decision's
router_version. Artifacts are pickles: load only files you wrote."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from routers.learned import LearnedRouter

FORMAT = "pitstop-router/1"


def default_artifact_path(family: str, version: str, root: str | Path = "var/routers") -> Path:
    return Path(root) / f"{family}-{version}.joblib"


def atomic_write(path: Path, payload: bytes) -> None:
    """Write to a temporary name and rename into place: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def save_router(router: LearnedRouter, path: str | Path, training_data: dict[str, Any],
                metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the artifact; returns its manifest. The router's version is set here."""
    buffer = io.BytesIO()
    router.version, router.manifest = "pending", {}
    joblib.dump(router, buffer, compress=3)
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    created = datetime.now(UTC)
    version = f"{created:%Y%m%d%H%M%S}-{digest[:8]}"
    manifest = {
        "format": FORMAT,
        "name": router.name,
        "family": router.family,
        "version": version,
        "created_at": created.isoformat(),
        "models": router.models,
        "features": router.featurizer.spec.to_dict(),
        "encoder": None if router.featurizer.encoder is None else router.featurizer.encoder.meta,
        "training_data": training_data,
        "metrics": metrics or {},
    }
    router.version, router.manifest = version, manifest
    out = io.BytesIO()
    joblib.dump({"manifest": manifest, "router": router}, out, compress=3)
    path = Path(path)
    # The JSON copy goes first: the artifact appearing is what watchers wait on, and it must find it.
    atomic_write(path.with_name(path.name + ".json"), json.dumps(manifest, indent=2).encode())
    atomic_write(path, out.getvalue())
    return manifest


def load_router(artifact_path: str | Path) -> LearnedRouter:
    """The router stored at `artifact_path` (raises FileNotFoundError / ValueError on a bad file)."""
    payload = joblib.load(Path(artifact_path))
    if not isinstance(payload, dict) or payload.get("manifest", {}).get("format") != FORMAT:
        raise ValueError(f"{artifact_path} is not a {FORMAT} artifact")
    router: LearnedRouter = payload["router"]
    router.version = payload["manifest"]["version"]
    router.manifest = payload["manifest"]
    return router


def read_manifest(artifact_path: str | Path) -> dict[str, Any]:
    """The JSON manifest beside the artifact (no unpickling)."""
    return json.loads(Path(str(artifact_path) + ".json").read_text())


def artifact_fingerprint(artifact_path: str | Path) -> str | None:
    """Changes whenever the file is replaced or rewritten; None if it is missing."""
    try:
        st = os.stat(artifact_path)
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class ArtifactWatcher:
    """Polls one artifact file for hot reload: `poll()` returns a freshly loaded router when the file was
    replaced since the last load, else None. A file that vanished or fails to load keeps the current
    router (the error is raised to the caller only through the log)."""

    def __init__(self, artifact_path: str | Path) -> None:
        self.path = Path(artifact_path)
        self.fingerprint = artifact_fingerprint(self.path)

    def poll(self) -> LearnedRouter | None:
        current = artifact_fingerprint(self.path)
        if current is None or current == self.fingerprint:
            return None
        try:
            router = load_router(self.path)
        except (OSError, ValueError, EOFError) as error:
            logging.getLogger("pitstop.routers").warning("reload of %s failed: %s", self.path, error)
            return None
        self.fingerprint = current
        return router
