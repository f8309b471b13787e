"""`pitstop engine serve --model FOLDER` where the folder is a decoder classifier (engine/classifier_config.py,
a *ForSequenceClassification or a causal LM with `--hf-overrides`' classifier_from_token): the engine runs it
(engine/decoder_scorer.py) behind the cross-encoder's server (engine/server/cross_encoder_app.py), which adds
vLLM's /classify (engine/classify_api.py); a one-label model answers rerank and score too."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route

from engine.async_engine import AsyncEngine
from engine.classifier_config import ClassifierHead
from engine.classify_api import classify_answer
from engine.decoder_scorer import DecoderScorer
from engine.server.cross_encoder_app import CLASSIFY_PATHS, answering, create_cross_encoder_app


def create_classifier_app(engine: AsyncEngine, model_dir: str | Path, head: ClassifierHead,
                          model_name: str) -> Starlette:
    routes = [Route(path, answering(classify_answer), methods=["POST"]) for path in CLASSIFY_PATHS]
    return create_cross_encoder_app(DecoderScorer(engine, model_dir, head), model_name, routes)
