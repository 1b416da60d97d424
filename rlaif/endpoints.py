"""Model specs and the server's declared endpoints: what a run may name, and what stays on the server.

A model spec (policy_model, feedback.model, judge.model, the CLI's --model) is one of

- a registry name (`smollm2-135m-instruct`), a folder by absolute path under RLAIF_MODEL_ROOTS, a hub id; or
- `endpoint:<name>`: an OpenAI-compatible service the server's administrator declared in RLAIF_ENDPOINTS.

A run names an endpoint and nothing else: the URL, the served model and the API key live in the server's
settings, so a request can neither point a worker at an address of its choosing nor carry a key into run
configs, events or checkpoints. The key itself is not even in the settings: `api_key_env` is the *name* of the
environment variable that holds it, read by the client when it connects (rlaif/generation/endpoint_client.py).

    RLAIF_ENDPOINTS='{"big-judge": {"base_url": "http://10.0.0.5:8000/v1", "model": "Qwen/Qwen2.5-72B-Instruct",
                      "tokenizer": "/srv/models/qwen2.5-72b-instruct", "api_key_env": "BIG_JUDGE_KEY"}}'
    rlaif judge-eval --judge endpoint:big-judge --limit 64

No HTTP here (the API imports this module to check names); the client is rlaif/generation/endpoint_client.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

ENDPOINT_PREFIX = "endpoint:"
ENDPOINT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# "http:", "https:", "file:", "localhost:8000", "//host": anything with a scheme or an authority is an address.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
USAGE_DIR = ".endpoint-usage"  # per stage folder: one JSON line per endpoint request (hidden: not in the manifest)
CACHE_DIR = ".endpoint-cache"  # per stage folder: responses by SHA-256 of the request (hidden: not in the manifest)


class EndpointConfig(BaseModel):
    """One OpenAI-compatible endpoint, declared by the server's administrator (RLAIF_ENDPOINTS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        description="Base URL of the OpenAI-compatible API, up to and including /v1 (http://10.0.0.5:8000/v1)."
    )
    model: str = Field(description="The served model name sent in each request (`model`).")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API key (sent as a Bearer token); never the key.",
    )
    api: Literal["completions", "chat"] = Field(
        default="completions",
        description="completions: prompts rendered locally with `tokenizer`'s chat template and sent to "
        "/v1/completions (the judge reads P(A), P(B) at the pre-filled answer position); chat: /v1/chat/completions "
        "(the server renders; the judge pre-fills the answer where the server allows it, else gives hard labels).",
    )
    tokenizer: str | None = Field(
        default=None,
        description="A registry name or model folder whose tokenizer and chat template match the served model: "
        "prompts are rendered, fitted to the context and counted with it. Required for api: completions.",
    )
    context_length: int | None = Field(
        default=None,
        ge=16,
        description="The served model's context in tokens; default: the tokenizer folder's config.json "
        "(max_position_embeddings).",
    )
    max_concurrency: int = Field(default=4, ge=1, le=1024, description="Requests in flight at once.")
    requests_per_minute: int | None = Field(default=None, ge=1, description="Most requests per minute; null: no limit.")
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens (prompt + max_tokens x n) per minute, counted before sending; null: no limit.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds one request may take (connect and read).")
    max_retries: int = Field(
        default=6,
        ge=0,
        le=100,
        description="Retries of a request after 429, 5xx or a connection error (jittered backoff, Retry-After "
        "honoured); other errors fail at once.",
    )
    price_per_prompt_token: float | None = Field(
        default=None, ge=0, description="Price of one prompt token (any currency), for the cost in stage results."
    )
    price_per_completion_token: float | None = Field(
        default=None, ge=0, description="Price of one completion token, for the cost in stage results."
    )

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#@]+(?:/[^\s?#@]*)?", value):
            raise ValueError(f"base_url {value!r}: need http(s)://host[:port]/... without credentials in it")
        return value.rstrip("/")


def parse_endpoints(value: Any) -> dict[str, EndpointConfig]:
    """RLAIF_ENDPOINTS as {name: EndpointConfig}: a JSON or YAML mapping (or a mapping already); names checked."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ValueError(f"RLAIF_ENDPOINTS is neither JSON nor YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("RLAIF_ENDPOINTS must be a mapping of endpoint name -> {base_url, model, ...}")
    endpoints: dict[str, EndpointConfig] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
            raise ValueError(f"RLAIF_ENDPOINTS: endpoint name {name!r} must match {ENDPOINT_NAME.pattern}")
        endpoints[name] = entry if isinstance(entry, EndpointConfig) else EndpointConfig.model_validate(entry)
        if endpoints[name].api == "completions" and endpoints[name].tokenizer is None:
            raise ValueError(
                f"RLAIF_ENDPOINTS[{name!r}]: api 'completions' needs a tokenizer (a registry name or model folder "
                "whose chat template renders the prompts)"
            )
    return endpoints


def endpoint_name(spec: str | None) -> str | None:
    """The endpoint's name when `spec` is `endpoint:<name>`, else None (a model loaded in process)."""
    if spec is None or not spec.startswith(ENDPOINT_PREFIX):
        return None
    return spec[len(ENDPOINT_PREFIX) :]


def is_endpoint(spec: str | None) -> bool:
    return endpoint_name(spec) is not None


def check_model_spec(spec: str, field: str) -> str:
    """`spec` if it is a well-formed model spec, else ValueError: an address or a key never gets into a run.

    Only the form is checked here (whether the endpoint is declared is the server's question: `model_problem`
    in api/routes/runs.py, and the client when it connects).
    """
    name = endpoint_name(spec)
    if name is not None:
        if not ENDPOINT_NAME.fullmatch(name):
            raise ValueError(
                f"{field} {spec!r}: an endpoint is named endpoint:<name> with a plain name ({ENDPOINT_NAME.pattern}); "
                "its URL and key are the server's (RLAIF_ENDPOINTS), never part of a run"
            )
        return spec
    if "://" in spec or spec.startswith("//") or _SCHEME.match(spec):
        raise ValueError(
            f"{field} {spec!r} looks like a URL: a run names a model (registry name or server folder) or an endpoint "
            "the server declares (endpoint:<name>, RLAIF_ENDPOINTS), never an address or a key"
        )
    return spec


def read_usage(folder: Path) -> dict[str, dict[str, Any]]:
    """Endpoint usage recorded under a stage folder ({role: {endpoint, requests, cached, retries, prompt_tokens,
    completion_tokens, cost}}); {} when the stage called no endpoint. Every attempt of every shard counts: a
    redelivered shard's second attempt pays only for what the cache did not already hold."""
    usage: dict[str, dict[str, Any]] = {}
    ledger = folder / USAGE_DIR
    if not ledger.is_dir():
        return usage
    for path in sorted(ledger.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # (a line cut by a worker that died while writing it)
                continue
            role = str(entry.get("role", "unknown"))
            total = usage.setdefault(
                role,
                {"endpoint": entry.get("endpoint"), "requests": 0, "cached": 0, "retries": 0, "prompt_tokens": 0,
                 "completion_tokens": 0, "cost": None},
            )  # fmt: skip
            for key in ("requests", "cached", "retries", "prompt_tokens", "completion_tokens"):
                total[key] += int(entry.get(key, 0))
            if entry.get("cost") is not None:
                total["cost"] = (total["cost"] or 0.0) + float(entry["cost"])
    return usage


def usage_counts(usage: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Token and request counts per role, flat, for a StageResult's counts (and so the stage's event)."""
    counts: dict[str, int] = {}
    for role, total in sorted(usage.items()):
        for key in ("requests", "cached", "prompt_tokens", "completion_tokens"):
            counts[f"{role}_{key}"] = int(total[key])
    return counts


def describe_usage(role: str, total: dict[str, Any]) -> str:
    """One role's usage in words, for events and the report's headline:
    "judge endpoint:big-judge: 48 requests (6 cached, 2 retried), 21,504 prompt + 48 completion tokens"."""
    text = (
        f"{role} {ENDPOINT_PREFIX}{total.get('endpoint')}: {total['requests']} requests ({total['cached']} cached, "
        f"{total['retries']} retried), {total['prompt_tokens']:,} prompt + {total['completion_tokens']:,} "
        "completion tokens"
    )
    return text if total.get("cost") is None else f"{text}, cost {total['cost']:.4g}"
