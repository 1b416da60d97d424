"""Request and response bodies of the REST API (the OpenAPI schema at /docs is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from rlaif.constitution_edit import ConstitutionDelta, PrincipleEdit

# The largest integer a query parameter may carry into SQL (SQLite INTEGER, PostgreSQL BIGINT / OFFSET).
INT64_MAX = 2**63 - 1


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters (\\x00) are not allowed")
    return value


# Text stored in or compared with a database column: PostgreSQL cannot hold NUL characters (SQLite can), so the
# API refuses them on both (422) rather than failing in the database (500).
ColumnText = Annotated[str, AfterValidator(_no_nul), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})]


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorPublic(BaseModel):
    """Every 4xx/5xx body: a one-line `detail`, and for validation failures each problem in `errors`."""

    detail: str = Field(description="What went wrong, in one line.")
    errors: list[str] = Field(default_factory=list, description="Every problem found, each naming its field or line.")


# ---------------------------------------------------------------- constitutions


class PrincipleSummary(_Public):
    id: str
    tags: list[str]


class ConstitutionPublic(_Public):
    id: str = Field(description="Version id; the same content uploaded again by the same owner gets the same id.")
    name: str
    owner: str = Field(description="The API key's owner, or 'shipped' for files of the server's constitutions folder.")
    source: str = Field(description="'upload', 'patch' (made by PATCH from `parent`), or the shipped file's name.")
    parent: str | None = Field(
        default=None,
        description="The version this one was first made from by PATCH; null for uploads and shipped files.",
    )
    sha256: str = Field(description="SHA-256 of the canonical JSON content: the version.")
    principles: list[PrincipleSummary]
    created_at: datetime


class ConstitutionDetail(ConstitutionPublic):
    document: dict[str, Any] = Field(description="The validated constitution.")


class ConstitutionsPublic(BaseModel):
    data: list[ConstitutionPublic]
    count: int


class ConstitutionPatch(BaseModel):
    """PATCH /v1/constitutions/{id}: principle-level changes, applied in order, that make a new version."""

    model_config = ConfigDict(extra="forbid")

    changes: list[PrincipleEdit] = Field(
        min_length=1,
        max_length=1024,
        description='Applied in order: {"op": "add", "principle": {...}, "after"?: id}, {"op": "replace", '
        '"principle": {...}} (the principle with its id), {"op": "remove", "id": ...}, {"op": "tags", "id": ..., '
        '"tags": [...]}.',
    )


class ConstitutionDiff(ConstitutionDelta):
    """GET /v1/constitutions/{id}/diff: what version `id` adds, removes and changes relative to `against`."""

    id: str = Field(description="The version compared.")
    against: str | None = Field(description="The version it is compared with; null: none (every principle added).")


# ---------------------------------------------------------------- prompt sets


class PromptSetCreate(BaseModel):
    """JSON body of POST /v1/prompt-sets (JSONL files can be uploaded as the raw body or a multipart file)."""

    model_config = ConfigDict(extra="forbid")

    name: ColumnText = Field(default="prompts", max_length=200, description="A label for the set.")
    prompts: list[str | dict[str, Any]] = Field(description='Prompts: strings or {"prompt": ..., "id"?: ...} objects.')


class PromptPublic(BaseModel):
    id: str
    prompt: str


class PromptSetPublic(_Public):
    id: str
    name: str
    count: int = Field(description="Prompts kept after de-duplication.")
    duplicates: int = Field(description="Prompts dropped as duplicates of earlier ones.")
    sha256: str
    created_at: datetime
    preview: list[PromptPublic] = Field(default_factory=list, description="The first prompts of the set.")


class PromptSetsPublic(BaseModel):
    data: list[PromptSetPublic] = Field(description="The sets, newest first (without previews).")
    count: int


# ---------------------------------------------------------------- preference sets


class PreferencePairPublic(BaseModel):
    id: str
    prompt: str
    chosen: str
    rejected: str


class PreferenceSetPublic(_Public):
    id: str
    name: str
    count: int = Field(description="Pairs kept after de-duplication.")
    duplicates: int = Field(description="Pairs dropped as duplicates of earlier ones (the same three texts).")
    sha256: str
    created_at: datetime
    preview: list[PreferencePairPublic] = Field(default_factory=list, description="The first pairs of the set.")


class PreferenceSetsPublic(BaseModel):
    data: list[PreferenceSetPublic] = Field(description="The sets, newest first (without previews).")
    count: int


# ---------------------------------------------------------------- runs


class PrincipleSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    critique: list[str] | None = Field(
        default=None, description="Principle ids or tag:<tag> selectors for critique-revise; null = all."
    )
    judge: list[str] | None = Field(
        default=None, description="Principle ids or tag:<tag> selectors for the judge; null = all."
    )


class RunCreate(BaseModel):
    """POST /v1/runs. Explicit fields win over the same settings inside `config`."""

    model_config = ConfigDict(extra="forbid")

    constitution_id: str = Field(description="A constitution version id (GET /v1/constitutions).")
    prompt_set_id: str = Field(description="A prompt set id (POST /v1/prompt-sets).")
    preference_set_id: str | None = Field(
        default=None,
        description="A preference set id (POST /v1/preference-sets): human comparisons the reward model trains on "
        "beside the AI labels (reward_model.human_mix); pinned into the run when it is created. null = none.",
    )
    principles: PrincipleSelection = Field(default_factory=PrincipleSelection)
    policy_model: str | None = Field(default=None, description="Base policy model (registry name or server folder).")
    judge_model: str | None = Field(
        default=None,
        description="Judge model: registry name, server folder or endpoint:<name> (an endpoint the server declares "
        "in RLAIF_ENDPOINTS; never a URL); null = the policy model.",
    )
    iterations: int | None = Field(
        default=None, ge=1, le=10, description="RLAIF iterations (pairs -> judge -> RM -> PPO, or -> DPO)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description='Nested RunConfig overrides, e.g. {"ppo": {"kl_coef": 0.1}}; unknown keys -> 422.',
    )


RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class StageStatus(BaseModel):
    name: str
    kind: str
    iteration: int
    queue: str
    status: str = Field(description="pending, running, completing, succeeded, failed or cancelled.")
    done: int = Field(description="Items (sharded stages) or optimizer steps (training stages) done.")
    total: int | None = Field(description="Items or steps in all; null while unknown.")
    shards_done: int
    shards_total: int
    attempts: int = Field(description="Training stages: deliveries that took the lease (more than 1 = resumed).")
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None = Field(description="Wall time from start to finish (or to now while running).")
    error: str | None
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)


class BudgetFigures(BaseModel):
    """What a run costs (rlaif/budget.py), or the most one run may cost (the server's RLAIF_MAX_RUN_*)."""

    items: int | None = Field(description="Items fanned out over (prompts, comparisons, evaluation prompts).")
    shards: int | None = Field(description="Shards of the sharded stages (one row and one task each).")
    generated_tokens: int | None = Field(description="Tokens generated, every completion at its max_new_tokens.")
    optimizer_steps: int | None = Field(description="Optimizer steps of SFT, the reward models, PPO and DPO.")


class RunBudgetPublic(BudgetFigures):
    """A run's estimated cost, checked against the server's limits when it was created."""

    stages: dict[str, BudgetFigures] = Field(description="The estimate of each stage, in plan order.")


class RunSummary(BaseModel):
    id: str
    status: RunStatus
    constitution_id: str
    prompt_set_id: str
    preference_set_id: str | None = Field(default=None, description="The run's preference set, if it names one.")
    policy_model: str | None = Field(description="null when the stored config cannot be read (config_error).")
    iterations: int | None = Field(description="null when the stored config cannot be read (config_error).")
    policy_optimization: str | None = Field(
        default=None,
        description="ppo, dpo, online_dpo or best_of_n: how the run's AI feedback becomes its policy (null when the "
        "stored config cannot be read).",
    )
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    config_error: str | None = Field(
        default=None,
        description="Why the run's stored config no longer validates (a run stored by an older or faulty version); "
        "the run still lists, reads and cancels, with its config as stored.",
    )


class RunPublic(RunSummary):
    constitution_sha256: str
    judge_model: str | None = Field(description="null when the stored config cannot be read (config_error).")
    train_prompts: int
    eval_prompts: int
    started_at: datetime | None
    stages: list[StageStatus]
    config: dict[str, Any] = Field(description="The frozen RunConfig of the run (as stored, with a config_error).")
    budget: RunBudgetPublic | None = Field(
        default=None, description="The run's estimated cost (null with a config_error)."
    )
    disk_bytes: int | None = Field(
        default=None,
        description="Bytes the run's artifacts (inputs, datasets, checkpoints, logs) take on disk now, freed by "
        "DELETE /v1/runs/{id}; given by GET /v1/runs/{id} (null in other answers).",
    )


class RunDeleted(BaseModel):
    """The answer of DELETE /v1/runs/{id}."""

    id: str
    bytes_freed: int = Field(description="Bytes of the run's artifact folder removed from disk.")


class RunsPublic(BaseModel):
    data: list[RunSummary]
    count: int


class HeadToHeadCreate(BaseModel):
    """POST /v1/runs/compare/head-to-head: judge run A's evaluated answers against run B's."""

    model_config = ConfigDict(extra="forbid")

    run_ids: list[ColumnText] = Field(
        min_length=2,
        max_length=2,
        description="[A, B], two of the caller's runs with succeeded evaluations; the win rates are A's over B, "
        "judged by A's evaluation judge. [A, A] is allowed (a check of the judge: exactly 0.5).",
    )


class EventPublic(_Public):
    id: int
    stage: str | None
    kind: Literal["message", "metrics"]
    level: str
    message: str
    step: int | None
    data: dict[str, Any] | None
    created_at: datetime


class EventsPublic(BaseModel):
    data: list[EventPublic]
    next_after: int = Field(description="Pass as `after` to get the next page (the last id returned).")


class StageMetrics(BaseModel):
    final: dict[str, float] = Field(description="The stage's final metrics.")
    history: list[dict[str, Any]] = Field(description="Per-step metrics of training stages, in step order.")


class MetricsPublic(BaseModel):
    stages: dict[str, StageMetrics]


# ---------------------------------------------------------------- checkpoints


class CheckpointFile(BaseModel):
    path: str
    bytes: int
    sha256: str


class CheckpointPublic(BaseModel):
    id: str
    run_id: str
    stage: str
    step: int
    metrics: dict[str, Any]
    files: list[CheckpointFile]
    created_at: datetime
    download_url: str


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


# ---------------------------------------------------------------- usage


class QuotaLimits(BaseModel):
    """The server's quotas per API key (RLAIF_QUOTA_*); null = unlimited."""

    concurrent_runs: int | None = Field(description="Runs queued or running at once (429 above).")
    stored_bytes: int | None = Field(description="Bytes stored; at or above it new runs are refused (403).")
    tokens_per_day: int | None = Field(description="Tokens generated per UTC day, by the runs' budgets (429 above).")


class UsagePublic(BaseModel):
    """GET /v1/usage: what the caller's key uses now, its quotas and what one run may cost."""

    active_runs: int = Field(description="The key's runs queued or running.")
    stored_bytes: int = Field(description="run_bytes + upload_bytes.")
    run_bytes: int = Field(description="Bytes of the key's run folders in the artifact store (inputs, data, models).")
    upload_bytes: int = Field(description="Bytes of the key's stored prompt sets and constitutions (as JSON).")
    tokens_today: int = Field(
        description="Tokens the key's runs created today (UTC) may generate, by their budgets; runs that were "
        "stopped before they started count nothing."
    )
    day_started_at: datetime = Field(description="Start of the current quota day (midnight UTC).")
    quotas: QuotaLimits
    run_limits: BudgetFigures = Field(description="The most one run may cost (RLAIF_MAX_RUN_*; null = no limit).")


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str
    broker: str
