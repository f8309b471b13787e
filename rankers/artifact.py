"""Ranker artifacts: one file per trained ranker, with its version, training data reference and metrics.

Format (`pitstop-ranker/1`): a joblib file holding {"manifest": {...}, "ranker": Ranker}, and a JSON
copy of the manifest beside it (`<file>.json`). The static encoder table is never pickled in (it is
MBs, and shared with the router): a ranker that needs it names it by sha256 and the loader attaches
the local table. The committed default (rankers/artifacts/default.joblib) is `listmle-blend`: the
fine-tuned `listmle` encoder, whose frozen word table comes from the encoder's package, blended with a
`lambdarank` companion on prompt statistics and cues; the committed cheap ranker
(rankers/artifacts/pitstop.joblib) needs nothing beside it. A fresh clone ranks without building
anything. Artifacts are pickles: load only files you wrote."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib

from rankers.base import Ranker
from routers.artifact import atomic_write

FORMAT = "pitstop-ranker/1"
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "default.joblib"
CHEAP_ARTIFACT = DEFAULT_ARTIFACT.with_name("pitstop.joblib")  # no encoder, no onnxruntime: 0.3 ms a request
log = logging.getLogger("pitstop.rankers")


def save_ranker(ranker: Ranker, path: str | Path, training_data: dict[str, Any],
                metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the artifact; returns its manifest. The ranker's version is set here."""
    ranker.version, ranker.manifest = "pending", {}
    buffer = io.BytesIO()
    joblib.dump(ranker, buffer, compress=3)
    created = datetime.now(UTC)
    version = f"{created:%Y%m%d%H%M%S}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}"
    featurizer = ranker.featurizer
    manifest = {
        "format": FORMAT,
        "family": ranker.family,
        "version": version,
        "created_at": created.isoformat(),
        "models": ranker.models,
        "features": None if featurizer is None else featurizer.spec.to_dict(),
        "encoder": None if featurizer is None or featurizer.encoder is None else featurizer.encoder.meta,
        "score": "calibrated per model: share of its training answers ranked below, in [0, 1]; lower = shorter",
        "training_data": training_data,
        "metrics": metrics or {},
    }
    ranker.version, ranker.manifest = version, manifest
    out = io.BytesIO()
    joblib.dump({"manifest": manifest, "ranker": ranker}, out, compress=3)
    path = Path(path)
    # The JSON copy goes first: the artifact appearing is what watchers wait on, and it must find it.
    atomic_write(path.with_name(path.name + ".json"), json.dumps(manifest, indent=2, default=float).encode())
    atomic_write(path, out.getvalue())
    return manifest


def rewrite_ranker(path: str | Path, ranker: Ranker, manifest: dict[str, Any]) -> None:
    """Store an artifact's ranker again under its manifest (its version unchanged): for additions
    that do not change its scores, such as a work table."""
    ranker.version, ranker.manifest = manifest["version"], manifest
    out = io.BytesIO()
    joblib.dump({"manifest": manifest, "ranker": ranker}, out, compress=3)
    path = Path(path)
    atomic_write(path.with_name(path.name + ".json"), json.dumps(manifest, indent=2, default=float).encode())
    atomic_write(path, out.getvalue())


def load_ranker(path: str | Path, encoder_path: str | Path | None = None) -> Ranker:
    """The ranker stored at `path` (FileNotFoundError / ValueError on a bad file). A ranker on the
    static encoder gets the local table (distilled if missing); a different table is refused."""
    payload = joblib.load(Path(path))
    if not isinstance(payload, dict) or payload.get("manifest", {}).get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} artifact")
    manifest, ranker = payload["manifest"], payload["ranker"]
    ranker.version, ranker.manifest = manifest["version"], manifest
    if ranker.featurizer is not None:
        encoder = None
        if ranker.featurizer.spec.encoder == "static":
            from routers.encoder_store import load_or_distil  # noqa: PLC0415

            encoder = load_or_distil(encoder_path)
            wanted = (manifest.get("encoder") or {}).get("sha256")
            if wanted and encoder.meta.get("sha256") != wanted:
                raise ValueError(f"{path} was trained on encoder {wanted[:12]}, the local one is "
                                 f"{str(encoder.meta.get('sha256'))[:12]}; retrain the ranker")
        ranker.featurizer.attach(encoder)
    return ranker


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(str(path) + ".json").read_text())
