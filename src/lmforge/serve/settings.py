"""Server settings (pydantic-settings): flags of ``lmforge serve`` or ``LMFORGE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMFORGE_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; 127.0.0.1 keeps the server local")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0: any free port)")
    api_key: str | None = Field(
        None, description="require 'Authorization: Bearer KEY' on /v1 routes and /metrics (health routes stay open); "
                          "checked before the request body is read")
    metrics_public: bool = Field(False, description="with an API key: serve /metrics without it (for a scraper "
                                                    "that cannot send one)")
    cors_origins: list[str] = Field(default_factory=list, description="allow this origin by CORS (repeatable; off "
                                    "when none)", json_schema_extra={"flag": "--cors-origin"})
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body (413 above)")
    max_batch_inputs: int = Field(64, ge=1, description="most inputs in one request (422 above); a text read in "
                                  "windows counts as its windows")
    max_input_chars: int = Field(20_000, ge=1, description="longest input text in characters (422 above)")
    max_in_flight: int = Field(64, ge=1, description="requests served at once; more get 429 with Retry-After")
    micro_batch: bool = Field(True, description="gather concurrent requests into one forward pass")
    batch_max_inputs: int = Field(32, ge=1, description="most inputs gathered into one forward pass (windows "
                                  "counted)")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long to wait for more requests to gather")
    shutdown_delay_s: float = Field(0.0, ge=0, description="after SIGTERM: report not-ready (and turn new requests "
                                                         "away with 503) at least this long before stopping")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="after SIGTERM and the shutdown delay: how long requests already in flight may take "
                                "to finish; those still running then are dropped and the process exits with status 3")
    generation_batch: int = Field(16, ge=1, description="most sequences decoded together; more wait for a row")
    scheduler: Literal["continuous", "static"] = Field(
        "continuous", description="generation batching: continuous (requests join and leave the running batch at "
        "every decode step) or static (a batch runs to its end; requests that sample alike share the next one)")
    prefill_chunk: int = Field(256, ge=16, description="continuous: prompt tokens read per step between decode steps "
                               "(a longer prompt is read in chunks, so running streams keep flowing)")
    max_new_tokens: int = Field(512, ge=1, description="cap on tokens generated per request")
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto", description="weights generative models decode with: auto (int8 on a CPU, bfloat16 on a GPU, for "
        "Llama models like smollm2), float32 (exactly the model)")
    max_prompt_tokens: int | None = Field(None, ge=1, description="cap on prompt tokens (default: the model's context)")
    kb: Path | None = Field(None, description="a knowledge base (lmforge kb build) to answer /v1/kb/search and "
                            "/v1/kb/ask from; the served chat or QA models read it")
    kb_store: str | None = Field(None, description="the --kb is in PostgreSQL (postgresql://user@host/db) and --kb "
                                 "is its name there: replicas that name the same one share it",
                                 json_schema_extra={"flag": "--store"})
