"""Infrastructure settings (where things live), read from `RLAIF_*` environment variables; and the environment
defaults every rlaif process starts with (`apply_process_defaults`, called by the entry points).

Science (hyperparameters) never lives here: it is the `RunConfig` of a run (rlaif/config.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from rlaif.data import DATA_DIR
from rlaif.endpoints import EndpointConfig, parse_endpoints

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return Path.home() / ".cache" / "rlaif"


class Settings(BaseSettings):
    """Where rlaif keeps its state and how it reaches its services. Every field is `RLAIF_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RLAIF_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home, description="Root for caches, the default database and artifacts."
    )
    model_cache: Path | None = Field(default=None, description="Converted-model cache (default: <home>/models).")
    artifact_root: Path | None = Field(
        default=None, description="Datasets and checkpoints (default: <home>/artifacts)."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the run store (default: sqlite:///<home>/rlaif.db)."
    )
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    result_backend: str | None = Field(default=None, description="Celery result backend (default: the broker URL).")
    constitutions_dir: Path = Field(
        default=_REPO_ROOT / "constitutions", description="Folder of shipped constitution files listed by the API."
    )
    api_keys: str = Field(
        default="", description="Comma-separated `key:owner` pairs (or bare keys) accepted by the API."
    )
    model_roots: str = Field(
        default="",
        description="Comma-separated folders under which API requests may name model folders, by absolute path "
        "(e.g. /srv/models). Outside them a request can name only registered models (and, with HF_HUB_OFFLINE=0, "
        "hub ids): nothing in a request names a file on the server.",
    )
    data_dir: Path = Field(
        default=DATA_DIR,
        description="Folder of the named evaluation sets (eval.extra_sets: xstest, advbench, red_team, helpful) and "
        "the human-labelled preference pairs; runs name sets by choice, never by path. Default: the sets shipped in "
        "the package (rlaif/data).",
    )
    endpoints: Annotated[dict[str, EndpointConfig], NoDecode] = Field(
        default_factory=dict,
        description="OpenAI-compatible endpoints runs may name as `endpoint:<name>` (feedback.model, judge.model): a "
        "JSON or YAML mapping of name -> {base_url, model, api_key_env, api, tokenizer, max_concurrency, "
        "requests_per_minute, tokens_per_minute, timeout_s, ...} (rlaif/endpoints.py). Only the server declares them: "
        "a run names one and never carries a URL or a key; api_key_env is the name of the variable holding the key.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (a server's http://host:5000, or a local file:///srv/mlruns; a database URI "
        "needs the full mlflow package) that every training stage also logs to: one MLflow run per stage, named "
        "'<run id>/<stage>', the run config as params, the step metrics. Unset: metrics.jsonl and TensorBoard files "
        "only (rlaif/metrics_log.py).",
    )
    mlflow_experiment: str = Field(
        default="rlaif", description="MLflow experiment of the training stages' runs (with mlflow_tracking_uri)."
    )

    # Service (API, workers, CLI client).
    api_url: str = Field(default="http://127.0.0.1:8000", description="Where the CLI client finds the REST API.")
    api_key: str | None = Field(default=None, description="Bearer key the CLI client sends to the REST API.")
    max_upload_bytes: int = Field(
        default=10_000_000, ge=1, description="Largest constitution or prompt-set upload the API accepts (413 above)."
    )
    max_request_bytes: int = Field(
        default=1_000_000, ge=1, description="Largest JSON request body (413 above); uploads have max_upload_bytes."
    )
    rate_limit: str = Field(
        default="600/minute",
        description="Requests per API key (or, without a key, per client address) on /v1, in the `limits` "
        "notation ('600/minute', '20/second;1000/hour'); 429 with Retry-After above it. Empty: no limit.",
    )
    rate_limit_storage: str = Field(
        default="async+memory://",
        description="Where rate-limit windows live: per API process by default; 'async+redis://host:6379/1' "
        "shares them between API processes.",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="A worker's lease on a stage or shard lapses this long after its last heartbeat.",
    )
    heartbeat_s: float = Field(
        default=10.0, gt=0, description="Seconds between lease heartbeats (well below lease_ttl_s)."
    )
    train_devices: int = Field(
        default=1,
        ge=1,
        description="Local devices (GPUs, or CPU processes with gloo) a train worker runs each training stage on: "
        "above 1 the task starts the stage under torchrun on that many data-parallel ranks (rlaif/service/ranks.py) "
        "and keeps the lease, progress and stops itself. Stages that run in one process (online_dpo, best_of_n, ppo "
        "with rollout_backend vllm) still do, with a log line and an event saying why.",
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="Redis visibility timeout: an unacknowledged task is redelivered after this long.",
    )
    sweep_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between control sweeps that re-enqueue stale stages and shards."
    )
    broker_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Seconds to wait for the broker to accept a connection or answer a command. Past it a publish "
        "fails (the API then answers with the run waiting to be enqueued, and the control sweep enqueues it) and "
        "/healthz reports the broker unreachable, instead of waiting on a broker that never answers.",
    )

    # The run budget: what one run may cost, estimated from its config and prompt count when it is created
    # (rlaif/budget.py); 422 above any of them. None: no limit.
    max_run_items: int | None = Field(
        default=10_000_000,
        ge=1,
        description="Most items one run may fan out over, all sharded stages together (prompts of critique and "
        "pairs, comparisons of the judge, evaluation prompts).",
    )
    max_run_shards: int | None = Field(
        default=100_000,
        ge=1,
        description="Most shards (one database row and one task each) of one run, all sharded stages together.",
    )
    max_run_generated_tokens: int | None = Field(
        default=1_000_000_000,
        ge=1,
        description="Most tokens one run may generate, counting every completion at its max_new_tokens.",
    )
    max_run_optimizer_steps: int | None = Field(
        default=1_000_000,
        ge=1,
        description="Most optimizer steps of one run (SFT, reward models, PPO and DPO together).",
    )

    # Quotas per API key (owner). None: unlimited.
    quota_concurrent_runs: int | None = Field(
        default=None, ge=1, description="Most runs one key may have queued or running at once (429 above)."
    )
    quota_stored_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Most bytes one key may keep stored (its runs' artifacts, prompt sets and constitutions); at or "
        "above it new runs are refused (403) until runs are deleted.",
    )
    quota_tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens one key's runs may generate per UTC day, by the runs' budgets (rlaif/budget.py) "
        "as they are created (429 with Retry-After until midnight UTC above it).",
    )

    @field_validator("endpoints", mode="before")
    @classmethod
    def _parse_endpoints(cls, value: Any) -> dict[str, EndpointConfig]:
        return parse_endpoints(value)

    def model_root_paths(self) -> list[Path]:
        return [Path(part.strip()).expanduser().resolve() for part in self.model_roots.split(",") if part.strip()]

    @model_validator(mode="after")
    def _check_rate_limit(self) -> Settings:
        if self.rate_limit.strip():
            from limits import parse_many

            try:
                parse_many(self.rate_limit)
            except ValueError as exc:
                raise ValueError(f"RLAIF_RATE_LIMIT {self.rate_limit!r}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_timings(self) -> Settings:
        # A busy second delivery retries after lease_ttl_s; that retry must come before Redis redelivers again.
        if self.lease_ttl_s >= self.visibility_timeout_s:
            raise ValueError(
                f"RLAIF_LEASE_TTL_S {self.lease_ttl_s} must be below RLAIF_VISIBILITY_TIMEOUT_S {self.visibility_timeout_s}"
            )
        if self.heartbeat_s >= self.lease_ttl_s:
            raise ValueError(f"RLAIF_HEARTBEAT_S {self.heartbeat_s} must be below RLAIF_LEASE_TTL_S {self.lease_ttl_s}")
        return self

    def api_key_owners(self) -> dict[str, str]:
        """{key: owner} from `api_keys`; a bare key belongs to owner "default"."""
        owners: dict[str, str] = {}
        for entry in self.api_keys.split(","):
            key, _, owner = entry.strip().partition(":")
            if key:
                owners[key] = owner.strip() or "default"
        return owners

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.home / "models"

    @property
    def artifacts_dir(self) -> Path:
        return self.artifact_root or self.home / "artifacts"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'rlaif.db'}"


settings = Settings()


# Environment defaults of an rlaif process. torch (OpenMP) and huggingface_hub read these once, when they are first
# imported, so they are set by each entry point before anything imports them: the CLI's main callback and a
# worker's start-up, never as a side effect of importing an rlaif module. A value the operator set wins.
PROCESS_DEFAULTS: dict[str, str] = {
    # OpenMP threads sleep between parallel regions instead of spin-waiting: processes that share cores (the API,
    # several workers, the tests) otherwise slow each other down up to 20x.
    "OMP_WAIT_POLICY": "PASSIVE",
    # No Hugging Face hub unless the operator turns it on (HF_HUB_OFFLINE=0): models come from the registry, the
    # model cache or folders, and no request makes the server download. rlaif.modeling.resolve_model and the API's
    # model check read an unset variable the same way.
    "HF_HUB_OFFLINE": "1",
}


def apply_process_defaults() -> None:
    """Set each PROCESS_DEFAULTS variable the environment does not already set. Call it first thing in a process's
    entry point, before torch, transformers or huggingface_hub is imported (later it changes nothing they read)."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)
