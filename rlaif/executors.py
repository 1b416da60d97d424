"""How the service runs each kind of stage with the plain-Python cores in rlaif/stages/.

A sharded stage (critique, pairs, judge) is three calls: `stage_inputs` (the items the stage fans out over,
in a fixed order), `run_shard` (the core over one shard's unfinished items, yielding one output record per
input item, with the same id) and `export_stage` (the finished items, in id order, to the stage's JSONL
artifacts with the manifest last, exactly as the core's own `run_<stage>` writes them, so the next stage and
the plain-Python path read them). A training stage (sft, reward_model, ppo, dpo) is one call, `train_stage`, to the
core's `run_<stage>`, which resumes from its newest step checkpoint; so is the evaluate stage, which then adds
its headline figures to the final policy's model card (`add_evaluation_to_checkpoint`). Cores are imported
inside the functions: the API imports this package's neighbours and must never import torch.

Models are cached per worker process (one generator, one judge), because consecutive shards of a stage
use the same model and loading it costs seconds. An `endpoint:<name>` feedback or judge model is a client of the
declared endpoint instead, one per stage folder: its responses are cached and its usage recorded there, so a
redelivered shard pays nothing twice and `export_stage` puts the stage's requests and tokens in its result.

    python -c "from rlaif.executors import stage_inputs; help(stage_inputs)"
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from rlaif.budget import training_steps
from rlaif.config import GenerationBackendConfig, RunConfig
from rlaif.constitution import Constitution
from rlaif.endpoints import is_endpoint, read_usage
from rlaif.evaluation.judge_gate import check_labels
from rlaif.pipeline import (
    SINGLE_TASK,
    StageSpec,
    final_reward_stage,
    labels_stage,
    pairs_stage,
    policy_kind,
    policy_stage,
    reward_stage,
    start_policy_stage,
)
from rlaif.records import Comparison, CritiqueRecord, LabelRecord, PromptItem, ResponseSet, SFTExample
from rlaif.stages import (
    COMPARISONS_FILE,
    CRITIQUE_RECORDS_FILE,
    INPUTS,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PROMPTS_FILE,
    RESPONSES_FILE,
    SFT_DATA_FILE,
    StageResult,
)
from rlaif.store import (
    ArtifactStore,
    StoreError,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    read_manifest,
    verify_manifest,
    write_jsonl,
    write_manifest,
)

if TYPE_CHECKING:
    from rlaif.evaluation.report import EvalReport

SINGLE_TASK_KINDS = SINGLE_TASK


@dataclass(frozen=True)
class StageContext:
    """Everything a stage call needs, re-read from the run store for every task."""

    run_id: str
    spec: StageSpec
    cfg: RunConfig
    store: ArtifactStore
    constitution: Constitution

    @property
    def out_dir(self) -> Path:
        return self.store.stage_dir(self.run_id, self.spec.name)

    def model_of(self, stage: str, verify: bool = True) -> str:
        """The Hugging Face folder a finished training stage wrote (checked complete unless `verify` is False)."""
        folder = self.store.stage_dir(self.run_id, stage, create=False) / MODEL_DIR
        if verify:
            verify_manifest(folder)
        return str(folder)


# ---------------------------------------------------------------- sharded stages


def stage_inputs(ctx: StageContext, shard: int | None = None) -> list[Any]:
    """The items a sharded stage fans out over, in file order (so shard k is always the same items); with `shard`,
    only that shard's items (`shard_size` of them from `shard x shard_size` on), the only lines parsed."""
    start, stop = (0, None) if shard is None else (shard * ctx.cfg.shard_size, (shard + 1) * ctx.cfg.shard_size)
    if ctx.spec.kind in ("critique", "pairs"):
        return read_jsonl(ctx.store.path(ctx.run_id, INPUTS, PROMPTS_FILE), PromptItem, start, stop)
    if ctx.spec.kind == "judge":
        source = pairs_stage(ctx.spec.iteration)
        if not ctx.store.is_complete(ctx.run_id, source):
            raise StoreError(f"run {ctx.run_id}: stage {source!r} has no manifest; its comparisons are not finished")
        return read_jsonl(ctx.store.path(ctx.run_id, source, COMPARISONS_FILE), Comparison, start, stop)
    raise ValueError(f"stage {ctx.spec.name!r} ({ctx.spec.kind}) is not a sharded stage")


def run_shard(ctx: StageContext, items: Sequence[Any], shard: int) -> Iterator[BaseModel]:
    """The stage core over `items`; one output record per item, with the item's id.

    The run seed is passed unchanged: the cores draw principles per item id, so a shard gets the same
    principles as an unsharded run would.
    """
    cfg = ctx.cfg
    if not items:
        return
    if ctx.spec.kind == "critique":
        from rlaif.stages.critique_revise import critique_revise

        generator = cached_generator(
            cfg.feedback_model, cfg.generation.model_dump_json(), _stage_dir(ctx, cfg.feedback_model)
        )
        yield from critique_revise(
            items, ctx.constitution, cfg.critique.principles, cfg.critique, generator, cfg.seed, progress=False
        )
    elif ctx.spec.kind == "pairs":
        from rlaif.generation.common import derive_seed
        from rlaif.stages.sample_pairs import sample_responses

        policy = ctx.model_of(start_policy_stage(cfg, ctx.spec.iteration))
        generator = cached_generator(policy, cfg.generation.model_dump_json())
        # As run_sample_pairs: the stage name is part of the seed, so each RLAIF iteration samples afresh.
        yield from sample_responses(items, cfg.pairs, generator, derive_seed(cfg.seed, ctx.spec.name))
    elif ctx.spec.kind == "judge":
        from rlaif.stages.judge import judge_comparisons, judge_generator

        model_name = cfg.judge_model
        model, tokenizer = cached_judge(model_name, cfg.judge.dtype, _stage_dir(ctx, model_name))
        generator = None
        if cfg.judge.chain_of_thought:
            generator = judge_generator(model, tokenizer, model_name, cfg.generation.batch_size)
        yield from judge_comparisons(
            items, model, tokenizer, ctx.constitution, cfg.judge.principles, cfg.judge, cfg.seed,
            generator=generator, progress=False,
        )  # fmt: skip
    else:
        raise ValueError(f"stage {ctx.spec.name!r} ({ctx.spec.kind}) is not a sharded stage")


def export_stage(ctx: StageContext, payloads: Sequence[dict[str, Any]]) -> StageResult:
    """Write a sharded stage's records (already in id order) as its JSONL artifacts; manifest last."""
    out, name = ctx.out_dir, ctx.spec.name
    if ctx.spec.kind == "critique":
        from rlaif.stages import critique_revise as core

        records = [CritiqueRecord.model_validate(p) for p in payloads]
        sft = core.to_sft_examples(records)
        write_jsonl(out / CRITIQUE_RECORDS_FILE, records)
        write_jsonl(out / SFT_DATA_FILE, sft)
        result = core.stage_result(records, len(sft), read_usage(out))
    elif ctx.spec.kind == "pairs":
        from rlaif.stages import sample_pairs as core

        response_sets = [ResponseSet.model_validate(p) for p in payloads]
        comparisons = [c for rs in response_sets for c in core.make_comparisons(rs)]
        write_jsonl(out / RESPONSES_FILE, response_sets)
        write_jsonl(out / COMPARISONS_FILE, comparisons)
        policy = ctx.model_of(start_policy_stage(ctx.cfg, ctx.spec.iteration))
        result = core.stage_result(name, policy, response_sets, comparisons)
    elif ctx.spec.kind == "judge":
        from rlaif.stages import judge as core

        labels = [LabelRecord.model_validate(p) for p in payloads]
        write_jsonl(out / LABELS_FILE, labels)
        result = core.stage_result(name, labels, len(labels), read_usage(out))
        # The quality gate over the labels (rlaif/evaluation/judge_gate.py): the run state machine warns or stops on it.
        result.extra["gate"] = check_labels(result.metrics, ctx.cfg.judge.gate).model_dump()
    else:
        raise ValueError(f"stage {name!r} ({ctx.spec.kind}) is not a sharded stage")
    result = result.model_copy(update={"stage": name})
    write_manifest(out, extra={"stage": name, "counts": result.counts, "metrics": result.metrics})
    return result


def _stage_dir(ctx: StageContext, model: str) -> str | None:
    """The stage folder for an endpoint's cache and usage ledger; None for a model loaded in process (so its
    cached copy serves every run)."""
    return str(ctx.out_dir) if is_endpoint(model) else None


@functools.lru_cache(maxsize=1)
def cached_generator(model: str, backend_json: str, stage_dir: str | None = None) -> Any:
    from rlaif.generation import make_generator

    backend = GenerationBackendConfig.model_validate_json(backend_json)
    return make_generator(model, backend, stage_dir=None if stage_dir is None else Path(stage_dir))


@functools.lru_cache(maxsize=1)
def cached_judge(model: str, dtype: str, stage_dir: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of the judge; for an endpoint, (EndpointScorer, its tokenizer)."""
    if is_endpoint(model):
        from rlaif.judging.endpoint import EndpointScorer

        scorer = EndpointScorer(model, stage_dir=None if stage_dir is None else Path(stage_dir))
        return scorer, scorer.tokenizer
    from rlaif.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm(model, dtype=dtype), load_tokenizer(model)


# ---------------------------------------------------------------- training stages


def train_stage(ctx: StageContext) -> StageResult:
    """Run the training core of the stage; it resumes from its newest step checkpoint and skips finished work."""
    cfg, store, run_id, spec = ctx.cfg, ctx.store, ctx.run_id, ctx.spec
    if spec.kind == "sft":
        from rlaif.stages.sft import run_sft

        return run_sft(cfg, store, run_id, cfg.policy_model, stage=spec.name)
    if spec.kind == "reward_model":
        from rlaif.stages.reward_model import run_reward_model

        return run_reward_model(
            cfg, store, run_id, ctx.model_of("sft"), stage=spec.name, labels_stage=labels_stage(spec.iteration)
        )
    if spec.kind == "ppo":
        from rlaif.stages.ppo import run_ppo

        policy = ctx.model_of(start_policy_stage(cfg, spec.iteration))
        return run_ppo(cfg, store, run_id, policy, ctx.model_of(reward_stage(spec.iteration)), stage=spec.name)
    if spec.kind == "dpo":
        from rlaif.stages.dpo import run_dpo

        policy = ctx.model_of(start_policy_stage(cfg, spec.iteration))
        return run_dpo(
            cfg, store, run_id, policy, stage=spec.name, labels_stage=labels_stage(spec.iteration),
            reference_model=ctx.model_of("sft"),
        )  # fmt: skip
    if spec.kind == "evaluate":
        return evaluate_stage(ctx)
    raise ValueError(f"stage {spec.name!r} ({spec.kind}) is not a training stage")


def evaluate_stage(ctx: StageContext) -> StageResult:
    """Stage 7 on the models of the last iteration, then its figures into the final policy's meta.json and card.

    A redelivered task finds the report finished (run_evaluate returns it) and rewrites the same card. The
    model folders are verified only before the evaluation: afterwards the policy folder is the one being
    rewritten, and a worker that died between its card and its manifest must be able to finish the job.
    """
    from rlaif.evaluation.report import load_report
    from rlaif.stages.evaluate import run_evaluate

    cfg, store, run_id, spec = ctx.cfg, ctx.store, ctx.run_id, ctx.spec
    # The evaluation loads each model it needs in turn: drop the ones this worker kept for earlier shards.
    cached_generator.cache_clear()
    cached_judge.cache_clear()
    last = spec.iteration
    policy_stage_name = policy_stage(cfg, last)
    verify = not store.is_complete(run_id, spec.name)
    policy = ctx.model_of(policy_stage_name, verify)
    reward = final_reward_stage(cfg)  # None: a DPO run has no reward model
    result = run_evaluate(
        cfg,
        store,
        run_id,
        cfg.policy_model,
        ctx.model_of("sft", verify),
        policy,
        ctx.model_of(reward, verify) if reward is not None else None,
        ctx.constitution,
        stage=spec.name,
        judge_stage=labels_stage(last),
        ppo_stage=policy_stage_name if policy_kind(cfg) == "ppo" else None,  # the PPO monitors read PPO metrics
        progress=False,
    )
    add_evaluation_to_checkpoint(Path(policy), load_report(store, run_id, spec.name), result.metrics, spec.name)
    return result


def add_evaluation_to_checkpoint(folder: Path, report: EvalReport, metrics: dict[str, float], stage: str) -> None:
    """Put the evaluation into a checkpoint folder: eval/* metrics and a pointer to the report in meta.json,
    the headline block in the model card (README.md), then the manifest again, last. Idempotent."""
    from rlaif.checkpoints import CARD_FILE, META_FILE, model_card
    from rlaif.evaluation.report import card_headline

    manifest = read_manifest(folder)
    if manifest is None:
        raise StoreError(f"{folder} has no manifest: not a finished checkpoint, cannot add the evaluation to it")
    meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    meta["evaluation"] = {
        "report": f"{stage}/report.json",
        "judge_model": report.judge_model,
        "prompts": report.prompts,
        "created_at": report.created_at,
    }
    atomic_write_json(folder / META_FILE, meta)
    atomic_write_text(folder / CARD_FILE, model_card(meta).rstrip("\n") + "\n\n" + card_headline(report))
    write_manifest(folder, {key: value for key, value in manifest.items() if key != "files"})


class MetricsTail:
    """New lines of a training stage's metrics.jsonl, and the stage's expected number of steps.

    Reads the whole (small) file each time and returns the steps after the last one returned, because a
    resumed core truncates the file back to its checkpoint and writes those steps again.
    """

    def __init__(self, ctx: StageContext, last_step: int = 0) -> None:
        self.path = ctx.out_dir / METRICS_FILE
        self.last_step = last_step
        self.total = expected_steps(ctx)

    def read_new(self) -> list[tuple[int, dict[str, Any]]]:
        if not self.path.exists():
            return []
        out: list[tuple[int, dict[str, Any]]] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line being appended right now
                continue
            step = int(record.get("step", 0))
            if step > self.last_step:
                out.append((step, record))
                self.last_step = step
        return out


def expected_steps(ctx: StageContext) -> int | None:
    """Optimizer steps (PPO: updates) the stage will take, for progress bars; None when not yet knowable."""
    cfg, spec = ctx.cfg, ctx.spec
    if spec.kind == "ppo":
        return cfg.ppo.num_updates
    if spec.kind == "sft":
        return _sft_steps(ctx.store.path(ctx.run_id, "critique", SFT_DATA_FILE), cfg)
    if spec.kind == "reward_model":
        data, section, extra = (
            ctx.store.path(ctx.run_id, labels_stage(spec.iteration), LABELS_FILE),
            cfg.reward_model,
            0.0,
        )
    elif spec.kind == "dpo":  # (pairs cut to nothing by dpo.max_length are dropped later: a step or so fewer)
        data, section, extra = ctx.store.path(ctx.run_id, labels_stage(spec.iteration), LABELS_FILE), cfg.dpo, 0.0
    else:
        return None
    if not data.exists():
        return None
    n = sum(1 for line in data.read_text(encoding="utf-8").splitlines() if line.strip())
    return training_steps(n, section.batch_size, section.epochs, section.eval_fraction, extra)


def _sft_steps(data: Path, cfg: RunConfig) -> int | None:
    """SFT's optimizer steps: revisions less their held-out slice, plus the helpful answers mixed in."""
    if not data.exists():
        return None
    kinds = [
        SFTExample.model_validate_json(line).kind
        for line in data.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    revisions, helpful = kinds.count("harmful"), kinds.count("helpful")
    # (one step per example in batches of 1: the number of revisions left after the held-out slice)
    n_train = training_steps(revisions, 1, 1, cfg.sft.eval_fraction) if revisions else 0
    mix = cfg.sft.helpful_mix
    n_train += helpful if mix is None else min(helpful, round(mix * n_train))
    return max(1, math.ceil(n_train / cfg.sft.batch_size)) * cfg.sft.epochs
