"""Infrastructure settings (where things live), read from `RLAIF_*` environment variables.

Science (hyperparameters) never lives here: it is the `RunConfig` of a run (rlaif/config.py).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return Path.home() / ".cache" / "rlaif"


class Settings(BaseSettings):
    """Where rlaif keeps its state and how it reaches its services. Every field is `RLAIF_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RLAIF_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Root for caches, the default database and artifacts.")
    model_cache: Path | None = Field(default=None, description="Converted-model cache (default: <home>/models).")
    artifact_root: Path | None = Field(default=None, description="Datasets and checkpoints (default: <home>/artifacts).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the run store (default: sqlite:///<home>/rlaif.db)."
    )
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="Celery broker (Redis).")
    result_backend: str | None = Field(default=None, description="Celery result backend (default: the broker URL).")
    constitutions_dir: Path = Field(
        default=_REPO_ROOT / "constitutions", description="Folder of shipped constitution files listed by the API."
    )
    api_keys: str = Field(default="", description="Comma-separated `key:owner` pairs (or bare keys) accepted by the API.")

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
