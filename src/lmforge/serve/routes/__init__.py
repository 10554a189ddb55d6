"""One router per resource: health, models, classify (and, for generative models, the OpenAI-compatible API)."""
