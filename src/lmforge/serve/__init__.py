"""The server: FastAPI app factory (``create_app``), task routes, OpenAI-compatible routes, limits, metrics, web UI."""
