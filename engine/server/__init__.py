"""OpenAI-compatible HTTP server over one AsyncEngine (`engine.server.app.create_app`).

Nothing is imported here: engine/openai_generation.py, which the server itself imports, needs
`engine.server.errors`, and an eager import of the app from this package made that a cycle whenever
the generation module was imported first (gateway/backends/local.py)."""
