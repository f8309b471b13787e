"""OpenAI-compatible HTTP server over one AsyncEngine."""

from engine.server.app import create_app

__all__ = ["create_app"]
