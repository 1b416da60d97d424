"""The stage contract: what every stage module exposes, the context it runs in, and the one composition of a
sharded stage.

A **sharded** stage (critique, pairs, judge; `rlaif.pipeline.STAGES[kind].sharded`) is a module with

    RECORD                                  the pydantic type of one output record (its `id` is the input item's)
    read_items(ctx, start=0, stop=None)     the items it fans out over, in file order (a shard reads its slice only)
    process(ctx, items)                     the work: one RECORD per item, yielded batch by batch, in input order
    write(ctx, records)                     the stage's artifacts from all records (in input order), manifest last
    finished(ctx)                           the StageResult of a stage whose manifest exists (nothing is redone)

and its `run_<stage>(ctx)` is `run_sharded(module, ctx)`: read, skip what a previous attempt finished, process the
rest, write. The service runs the same three functions with its database rows in place of the partial file
(rlaif/service/execute.py), so there is no second copy of any export or resume logic.

A **training** stage (sft, reward_model, ppo, dpo) and the evaluation are one `run_<stage>(ctx)` each: it resumes
from its newest step checkpoint, and skips the work when its model folder (or report) is complete. One that runs
data-parallel (under torchrun, rlaif/distributed.py) also has `data_parallel(cfg) -> str | None`: None, or why this
config runs in one process; the service then runs it on RLAIF_TRAIN_DEVICES ranks (rlaif/service/ranks.py).
A training module without it (online_dpo, best_of_n) always runs in one process.

Every core reports progress and checks for a stop through `ctx.hooks`: training loops call `on_step(step, total,
metrics)` after each optimizer step, sharded stages are checked by their runner between records. The service's
hook raises `StageStopped` when the run was cancelled or the lease lost (a heartbeat thread only sets a flag), so a
stop lands between two steps or two batches, never inside one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from rlaif.config import RunConfig, stored_run_config
from rlaif.constitution import Constitution
from rlaif.pipeline import StageSpec, spec_of, upstream
from rlaif.stages import CONFIG_FILE, CONSTITUTION_FILE, INPUTS, MODEL_DIR, StageResult
from rlaif.store import ArtifactStore, MissingArtifact, StoreError, verify_manifest

log = logging.getLogger(__name__)

PARTIAL_FILE = ".records.partial.jsonl"  # finished records of an interrupted run_<stage> (hidden: not in the manifest)

StopReason = Literal["cancelled", "lost"]
StepCallback = Callable[[int, int, dict[str, float]], None]  # (step, total steps, metrics) after each optimizer step


class StageStopped(BaseException):
    """The stage was asked to stop (run cancelled, or another worker took the lease over). Raised by the hook in
    the working thread between steps or batches; a BaseException, so a core's `except Exception` cannot swallow it."""

    def __init__(self, reason: StopReason):
        self.reason = reason
        super().__init__(reason)


@dataclass
class StageHooks:
    """How a core reports progress and learns that it must stop. The defaults do nothing (the CLI and tests);
    the service passes its own (rlaif/service/execute.py)."""

    on_progress: Callable[[int, int | None, dict[str, float]], None] | None = None
    should_stop: Callable[[], StopReason | None] | None = None

    def check(self) -> None:
        """Raise StageStopped when the runner asked for a stop."""
        reason = self.should_stop() if self.should_stop is not None else None
        if reason is not None:
            raise StageStopped(reason)

    def on_step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        """After an optimizer step (and its checkpoint): report it, then stop here if asked to."""
        if self.on_progress is not None:
            self.on_progress(step, total, metrics)
        self.check()


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs: the run's frozen config and constitution, the artifact store, which stage this is,
    and the hooks of whoever runs it. `models` overrides the model a read role resolves to (role -> model name or
    folder), for running one stage on models from elsewhere (the CLI's --base-model, tests)."""

    run_id: str
    spec: StageSpec
    cfg: RunConfig
    store: ArtifactStore
    constitution: Constitution | None = None
    hooks: StageHooks = field(default_factory=StageHooks)
    models: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        store: ArtifactStore,
        run_id: str,
        stage: str,
        cfg: RunConfig | None = None,
        constitution: Constitution | None = None,
        **kwargs: Any,
    ) -> StageContext:
        """The context of `stage` of a run folder: config and constitution from the run's pinned inputs unless given."""
        inputs = store.stage_dir(run_id, INPUTS, create=False)
        if cfg is None:
            path = inputs / CONFIG_FILE
            if not path.is_file():
                raise StoreError(f"run {run_id}: {path} is missing; pass the run's config")
            cfg = stored_run_config(path.read_text(encoding="utf-8"))
        if constitution is None and (inputs / CONSTITUTION_FILE).is_file():
            constitution = Constitution.model_validate_json((inputs / CONSTITUTION_FILE).read_text(encoding="utf-8"))
        return cls(run_id=run_id, spec=spec_of(cfg, stage), cfg=cfg, store=store, constitution=constitution, **kwargs)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def out_dir(self) -> Path:
        return self.store.stage_dir(self.run_id, self.spec.name)

    def source(self, role: str) -> str | None:
        """The folder `role` is read from ("inputs" or a stage name), None when the run has no such stage."""
        return upstream(self.cfg, self.spec, role)

    def path(self, role: str, filename: str) -> Path:
        """A file of the folder `role` is read from; FileNotFoundError naming the stage to run first."""
        source = self.source(role)
        if source is None:
            raise ValueError(f"stage {self.name}: this run has no stage for {role!r}")
        path = self.store.stage_dir(self.run_id, source, create=False) / filename
        if not path.is_file():
            what = (
                f"run {self.run_id} has no {filename.split('.')[0]}"
                if source == INPUTS
                else f"run the {source} stage first"
            )
            raise MissingArtifact(f"{path} is missing: {what}")
        return path

    def constitution_document(self) -> dict[str, Any] | None:
        """The pinned constitution as JSON, for checkpoint lineage (meta.json)."""
        return None if self.constitution is None else self.constitution.model_dump(mode="json")

    def has_model(self, role: str) -> bool:
        return role in self.models or self.source(role) is not None

    def model(self, role: str, verify: bool = True) -> str:
        """The model `role` reads: an override, or the Hugging Face folder the upstream stage wrote (verified
        complete unless `verify` is False)."""
        if role in self.models:
            return self.models[role]
        source = self.source(role)
        if source is None:
            raise ValueError(f"stage {self.name}: this run has no stage for {role!r}")
        folder = self.store.stage_dir(self.run_id, source, create=False) / MODEL_DIR
        if verify:
            verify_manifest(folder)
        return str(folder)


class ShardedStage(Protocol):
    """The module of a sharded stage (see the module docstring)."""

    RECORD: type[BaseModel]

    def read_items(self, ctx: StageContext, start: int = 0, stop: int | None = None) -> list[Any]: ...

    def process(self, ctx: StageContext, items: Sequence[Any]) -> Iterator[BaseModel]: ...

    def write(self, ctx: StageContext, records: Sequence[Any]) -> StageResult: ...

    def finished(self, ctx: StageContext) -> StageResult: ...


def run_sharded(stage: ShardedStage, ctx: StageContext, **process_options: Any) -> StageResult:
    """`read_items`, `process` on the items a previous attempt did not finish, `write`: a sharded stage in one
    process. Finished records are appended to a hidden partial file as they come, so an interrupted run resumes
    with the rest (the same per-item seeds give the same text either way)."""
    if ctx.store.is_complete(ctx.run_id, ctx.name):
        verify_manifest(ctx.out_dir)
        log.info("stage %s of run %s is already complete; reading its artifacts", ctx.name, ctx.run_id)
        return stage.finished(ctx)
    items = stage.read_items(ctx)
    partial = ctx.out_dir / PARTIAL_FILE
    known = {item.id for item in items}
    done = {record.id: record for record in read_partial(partial, stage.RECORD) if record.id in known}  # type: ignore[attr-defined]
    todo = [item for item in items if item.id not in done]
    if done:
        log.info("resuming stage %s: %d of %d items already done", ctx.name, len(done), len(items))
    with partial.open("a", encoding="utf-8") as sink:
        for record in stage.process(ctx, todo, **process_options):
            sink.write(record.model_dump_json() + "\n")
            sink.flush()
            done[record.id] = record  # type: ignore[attr-defined]
            ctx.hooks.check()
    result = stage.write(ctx, [done[item.id] for item in items])
    partial.unlink(missing_ok=True)
    return result


def read_partial(path: Path, model: type[BaseModel]) -> list[Any]:
    """The records of a partial file; a line cut short by a crash (the last one) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(model.model_validate_json(line))
        except (ValidationError, json.JSONDecodeError):
            log.warning("%s: ignoring a line cut short by an interrupted run", path)
    return out
