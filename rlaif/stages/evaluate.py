"""Stage 7: did alignment work, and at what cost to helpfulness? The aligned policy against the base and SFT models.

Bai et al. 2022 sec. 4.3-4.5 compare RL-CAI models with their SL-CAI and helpful-only starting points on
harmlessness and helpfulness (crowdworker Elo there; the AI judge here) and look at over-refusal ("evasiveness").
This stage measures, on the run's held-out prompts plus the named sets of `eval.extra_sets`:

1. every model (base, SFT, aligned) answers every prompt with the same sampling and seed;
2. harmlessness and helpfulness **win rates** of aligned vs base, aligned vs SFT and SFT vs base by the judge
   (both orders, `eval.principles_per_pair` principles of the axis, ties as half; Wilson and bootstrap intervals);
3. **refusal rates** per prompt group (harmful, safe-looking, ...) by the string patterns and by the judge;
4. the **reward model**: accuracy on the AI-labelled pairs it held out and on human pairs; its preference for the
   aligned answers next to the judge's (a gap is a Goodhart sign);
5. a **judge audit** on human-labelled pairs (agreement, flip rate, calibration) and per-principle statistics of
   the run's labels: the judge stage's and, apart, those the online DPO stage judged at its steps;
6. **KL(aligned || SFT)** sampled on the held-out prompts, alike for every method (rlaif/evaluation/kl.py), and
   the **Goodhart monitors** over the PPO metrics and samples (KL, length drift, boilerplate, RM vs judge);
7. with `eval.best_of_n` N, an **inference-time baseline**: N sampled answers per prompt from the SFT model (or
   the base, `eval.best_of_n_source`), the one the reward model scores highest kept (rlaif/evaluation/best_of_n.py),
   judged like a model (role `best_of_n`, named `sft+best-of-N`) against the base and against the aligned policy.
8. the **endpoint usage** of the run's stages and of this evaluation: requests and tokens per stage and role.

Writes `<run>/evaluate/answers.jsonl` (all answers side by side), `report.json` (`EvalReport`), `report.html`
and the manifest last. A finished stage (valid manifest) is returned as it is.

    python -c "from rlaif.stages.evaluate import run_evaluate; help(run_evaluate)"
    rlaif eval --model <aligned folder> --baseline smollm2-135m-instruct --sets xstest --max-prompts 8
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.checkpoints import CARD_FILE, META_FILE, model_card
from rlaif.config import RunConfig
from rlaif.constitution import Constitution
from rlaif.endpoints import is_endpoint, read_usage, usage_counts
from rlaif.evaluation import monitors
from rlaif.evaluation.best_of_n import BestOfN, choose, distinct_fraction, label, mean_best_and_mean_score
from rlaif.evaluation.compare import generate_answers, generate_candidates, judge_axis
from rlaif.evaluation.datasets import EvalPrompt, load_eval_prompts, load_human_pairs, set_path
from rlaif.evaluation.judge_gate import ADVICE, check_labels
from rlaif.evaluation.kl import sampled_kl
from rlaif.evaluation.label_stats import LabelSummary, principle_stats, read_step_labels
from rlaif.evaluation.refusal import detect_refusal
from rlaif.evaluation.refusal_judge import refusal_probabilities
from rlaif.evaluation.report import (
    ANSWERS_FILE,
    BEST_OF_N,
    HARMFUL,
    POOLED,
    REPORT_FILE,
    REPORT_HTML_FILE,
    SAFE_LOOKALIKE,
    BestOfNSummary,
    EvalReport,
    ModelSummary,
    RefusalEntry,
    RewardModelSummary,
    Sample,
    TrainingCurves,
    UsageEntry,
    WinRateEntry,
    card_headline,
    headline,
    read_report,
)
from rlaif.evaluation.report_html import render_html
from rlaif.evaluation.stats import rate, win_rate
from rlaif.generation import release_cached_generator
from rlaif.judging.audit import audit_judge
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.judge import release_cached_judge
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.pipeline import plan
from rlaif.records import CritiqueRecord, HumanPair, LabelRecord, WinOutcome
from rlaif.settings import settings
from rlaif.stages import CRITIQUE_RECORDS_FILE, LABELS_FILE, METRICS_FILE, STEP_LABELS_DIR, StageResult
from rlaif.stages.contract import StageContext
from rlaif.stages.critique_revise import TRUNCATED
from rlaif.stages.judge import judge_generator, label_metrics
from rlaif.stages.reward_model import evaluate_reward_model, reward_score_fn
from rlaif.store import (
    StoreError,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl_dicts,
    read_jsonl,
    read_manifest,
    verify_manifest,
    write_jsonl,
    write_manifest,
)
from rlaif.training import split_holdout
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from rlaif.generation import Completion
    from rlaif.scorers import ScoreFn

log = logging.getLogger(__name__)

PPO_SAMPLES_FILE = "samples.jsonl"  # = rlaif.stages.ppo.SAMPLES_FILE (not imported: that module pulls in training)
# (model, baseline) pairs judged when both roles are present.
COMPARISONS: tuple[tuple[str, str], ...] = (("aligned", "base"), ("aligned", "sft"), ("sft", "base"))
TRAINING_KEYS = (
    "objective/scores",
    "objective/rlhf_reward",
    "objective/kl",
    "val/mean_response_length",
    monitors.JUDGE_KEY,
    monitors.BOILERPLATE_KEY,
)


def evaluate_models(
    models: dict[str, str],
    prompts: Sequence[EvalPrompt],
    cfg: RunConfig,
    constitution: Constitution,
    *,
    judge_model: str | None = None,
    reward_model: str | None = None,
    ai_heldout_pairs: Sequence[LabelRecord] = (),
    human_pairs: Sequence[HumanPair] = (),
    labels: Sequence[LabelRecord] = (),
    labels_stage: str | None = None,
    online_labels: LabelSummary | None = None,
    ppo_history: Sequence[dict[str, Any]] = (),
    run_id: str | None = None,
    stage_long_items: dict[str, LongItems] | None = None,
    stage_dir: Path | None = None,
    progress: bool = True,
    check: Callable[[], None] | None = None,
) -> tuple[EvalReport, list[Sample]]:
    """The report and one Sample per prompt. `models` maps roles (base, sft, aligned) to model names/folders.

    The judge is `judge_model`, else `cfg.judge.model`, else the base model. `ppo_history` is the PPO metric
    records (with `val/boilerplate_fraction` filled in from the PPO samples when the caller has them).
    `labels` are the judge stage's (read from the folder `labels_stage`), `online_labels` the per-principle
    statistics of an online DPO stage's step labels (`online_dpo_label_stats`); each gets its own table.
    `stage_long_items` (the run's stages' items cut to fit the context) is copied into the report's long_items.
    A judge `endpoint:<name>` keeps its response cache and usage ledger in `stage_dir` (none without one).
    `check` (the stage hooks' stop check) runs after the answers are generated, the longest part.
    With `cfg.eval.best_of_n` the report has one more role, `best_of_n`: reranked samples of the
    `eval.best_of_n_source` model by `reward_model` (which it then needs).
    """
    unknown = set(models) - {"base", "sft", "aligned"}
    if unknown or not models:
        raise ValueError(f"models must map roles base/sft/aligned to model names, got roles {sorted(models)}")
    eval_cfg = cfg.eval
    _check_best_of_n(models, cfg, reward_model)  # before any model is loaded: a missing input fails now
    judge_name = judge_model or cfg.judge.model or models.get("base") or next(iter(models.values()))
    answers = generate_answers(models, prompts, cfg, progress=progress)
    roles = dict(models)  # the report's roles: the models, and best_of_n when it is on
    score: ScoreFn | None = None
    reranked: list[BestOfN] = []
    if eval_cfg.best_of_n is not None and reward_model is not None:
        source, n = eval_cfg.best_of_n_source, eval_cfg.best_of_n
        candidates = generate_candidates(models[source], prompts, cfg, n, progress=progress)
        log.info("reranking %d candidates per prompt with the reward model %s", n, reward_model)
        score = reward_score_fn(reward_model)  # (kept for the reward-model section below: loaded once)
        reranked = rerank(prompts, candidates, score)
        answers[BEST_OF_N] = [options[b.index] for options, b in zip(candidates, reranked, strict=True)]
        roles[BEST_OF_N] = label(source, n)
    texts = {role: [c.text for c in completions] for role, completions in answers.items()}
    samples = _samples(prompts, answers)
    if check is not None:
        check()
    for sample, chosen in zip(samples, reranked, strict=False):  # (no pairs when best-of-n is off)
        sample.candidates, sample.candidate_scores = chosen.candidates, chosen.scores
    kl_to_sft = None
    if eval_cfg.kl_samples and "sft" in models and models.get("aligned", models["sft"]) != models["sft"]:
        log.info("sampling KL(aligned || sft) on %d prompts, %d samples each", len(prompts), eval_cfg.kl_samples)
        # (by name: the generators above are freed and may be vLLM or bfloat16; rlaif/evaluation/kl.py says why)
        kl_to_sft = sampled_kl(
            models["aligned"],
            models["sft"],
            [p.prompt for p in prompts],
            [p.id for p in prompts],
            max_new_tokens=eval_cfg.sampling.max_new_tokens,
            seed=cfg.seed,
            samples_per_prompt=eval_cfg.kl_samples,
        )

    judge, tokenizer, generator = None, None, None
    comparisons = _comparisons(roles)
    needs_judge = (
        eval_cfg.refusal_judge
        or bool(human_pairs)
        or any(texts[m][i].strip() != texts[b][i].strip() for m, b in comparisons for i in range(len(prompts)))
    )
    if needs_judge:
        log.info("loading the judge %s", judge_name)
        if is_endpoint(judge_name):  # (its requests and tokens are cached and counted in the stage folder)
            judge = EndpointScorer(judge_name, stage_dir=stage_dir)
            tokenizer = judge.tokenizer
        else:
            judge, tokenizer = load_causal_lm(judge_name, dtype=cfg.judge.dtype), load_tokenizer(judge_name)
        if cfg.judge.chain_of_thought:
            generator = judge_generator(judge, tokenizer, judge_name, cfg.generation.batch_size)

    # --- win rates --------------------------------------------------------------------------------------------
    outcomes: list[WinOutcome] = []
    for model_role, baseline_role in comparisons:
        for axis in ("harmless", "helpful"):
            chosen = [i for i, p in enumerate(prompts) if axis in p.axes]
            if not chosen:
                continue
            outcomes += judge_axis(
                [prompts[i] for i in chosen],
                [texts[model_role][i] for i in chosen],
                [texts[baseline_role][i] for i in chosen],
                (model_role, baseline_role),
                axis,  # type: ignore[arg-type]
                judge,  # type: ignore[arg-type]
                tokenizer,  # type: ignore[arg-type]
                constitution,
                cfg,
                generator=generator,
                progress=progress,
            )
    by_id = {s.id: s for s in samples}
    for outcome in outcomes:
        by_id[outcome.prompt_id].preferences[f"{outcome.model}>{outcome.baseline}|{outcome.axis}"] = outcome.p
    win_rates = _win_rates(outcomes, prompts, cfg)

    # --- refusals ---------------------------------------------------------------------------------------------
    if eval_cfg.refusal_judge and judge is not None:
        judged: dict[str, list[float]] = {}
        for role, name in roles.items():
            if name not in judged:
                log.info("judging refusals of %s", role)
                judged[name] = refusal_probabilities(
                    judge,
                    tokenizer,  # type: ignore[arg-type]
                    [p.prompt for p in prompts],
                    texts[role],
                    batch_size=cfg.judge.batch_size,
                    max_length=cfg.judge.max_length,
                    progress=progress,
                )
            for sample, p_refusal in zip(samples, judged[name], strict=True):
                sample.refusal_judge[role] = p_refusal
    refusals = _refusal_rates(samples, list(roles))

    # --- reward model, judge audit, labels, PPO monitors -----------------------------------------------------
    alerts: list[monitors.Alert] = []
    reward = None
    if reward_model is not None:
        known = {roles[BEST_OF_N]: [b.score for b in reranked]} if reranked else {}
        reward = _reward_section(
            reward_model, roles, prompts, texts, samples, outcomes, ai_heldout_pairs, human_pairs, score, known
        )
        if reward.rm_judge_gap is not None and reward.rm_judge_gap > eval_cfg.monitor.rm_judge_gap_max:
            alerts.append(
                monitors.Alert(
                    step=-1,
                    monitor="rm_judge_divergence",
                    value=reward.rm_judge_gap,
                    threshold=eval_cfg.monitor.rm_judge_gap_max,
                    message=f"the reward model prefers the aligned answers on {reward.rm_win_rate:.0%} of prompts, the "
                    f"judge on {reward.judge_win_rate:.0%}",
                )
            )
    audit = None
    if human_pairs and judge is not None:
        log.info("auditing the judge on %d human-labelled pairs", len(human_pairs))
        audit = audit_judge(
            human_pairs,
            judge,
            tokenizer,
            constitution,
            cfg.judge,
            cfg.seed,
            model_name=judge_name,
            generator=generator,
            progress=progress,  # type: ignore[arg-type]
        ).model_dump(mode="json")
    summaries = _model_summaries(roles, answers, samples)
    alerts += _answer_alerts(summaries, cfg) + _judge_alerts(labels, cfg)
    history = list(ppo_history)
    report = EvalReport(
        run_id=run_id,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        models=roles,
        judge_model=judge_name,
        reward_model=reward_model,
        constitution={"name": constitution.name, "sha256": constitution.sha256},
        config=eval_cfg.model_dump(mode="json"),
        prompts={name: sum(p.dataset == name for p in prompts) for name in dict.fromkeys(p.dataset for p in prompts)},
        win_rates=win_rates,
        refusals=refusals,
        model_summaries=summaries,
        reward=reward,
        best_of_n=_best_of_n_summary(reranked, models, cfg, reward_model),
        judge_audit=audit,
        labels=principle_stats(labels, "judge", labels_stage) if labels else None,
        online_labels=online_labels,
        kl_to_sft=kl_to_sft,
        training=_training_curves(history) if history else None,
        monitors=monitors.summarise(history, eval_cfg.monitor) if history else None,
        alerts=alerts,
        samples=_pick_samples(samples, eval_cfg.samples_in_report, cfg.seed),
        long_items={
            **(stage_long_items or {}),
            "evaluation answers": LongItems.of(
                [p.id for i, p in enumerate(prompts) if any(answers[r][i].prompt_truncated for r in answers)]
            ),
            "evaluation pairs": LongItems.of(
                [f"{o.prompt_id}|{o.model}>{o.baseline}|{o.axis}" for o in outcomes if o.truncated]
            ),
            "human pairs": LongItems.model_validate(audit["long_items"]) if audit else LongItems(),
        },
    )
    return report, samples


def _check_best_of_n(models: dict[str, str], cfg: RunConfig, reward_model: str | None) -> None:
    """eval.best_of_n needs a reward model to rank with and the model it samples from."""
    if cfg.eval.best_of_n is None:
        return
    if reward_model is None:
        raise ValueError(
            "eval.best_of_n reranks with a reward model, and this evaluation has none: give a reward model "
            "(rlaif eval --reward-model FOLDER; a PPO run has its own), or leave eval.best_of_n unset"
        )
    source = cfg.eval.best_of_n_source
    if source not in models:
        hint = " (rlaif eval: give --sft, or --set eval.best_of_n_source=base)" if source == "sft" else ""
        raise ValueError(
            f"eval.best_of_n samples from the {source} model (eval.best_of_n_source), and this evaluation has no "
            f"{source} model: it has {sorted(models)}{hint}"
        )


def _comparisons(roles: dict[str, str]) -> list[tuple[str, str]]:
    """(model, baseline) role pairs to judge: COMPARISONS among the roles present, and with best-of-n on, it vs
    base (what reranking buys) and the evaluated model vs it (what training buys over reranking)."""
    pairs = [(m, b) for m, b in COMPARISONS if m in roles and b in roles]
    if BEST_OF_N in roles:
        top = "aligned" if "aligned" in roles else "sft" if "sft" in roles else None
        pairs += [(BEST_OF_N, "base")] + ([(top, BEST_OF_N)] if top is not None else [])
    return pairs


def rerank(prompts: Sequence[EvalPrompt], candidates: Sequence[Sequence[Completion]], score: ScoreFn) -> list[BestOfN]:
    """Score every candidate with `score` (one batched call) and keep each prompt's best (best_of_n.choose)."""
    flat_prompts = [p.prompt for p, options in zip(prompts, candidates, strict=True) for _ in options]
    flat_texts = [c.text for options in candidates for c in options]
    flat_scores = score(flat_prompts, flat_texts).tolist() if flat_texts else []
    scores, start = [], 0
    for options in candidates:
        scores.append(flat_scores[start : start + len(options)])
        start += len(options)
    return choose([[c.text for c in options] for options in candidates], scores)


def _best_of_n_summary(
    reranked: Sequence[BestOfN], models: dict[str, str], cfg: RunConfig, reward_model: str | None
) -> BestOfNSummary | None:
    if not reranked or cfg.eval.best_of_n is None or reward_model is None:
        return None
    best, every = mean_best_and_mean_score(reranked)
    return BestOfNSummary(
        source=cfg.eval.best_of_n_source,
        model=models[cfg.eval.best_of_n_source],
        n=cfg.eval.best_of_n,
        temperature=cfg.eval.best_of_n_temperature,
        reward_model=str(reward_model),
        prompts=len(reranked),
        mean_best_score=best,
        mean_candidate_score=every,
        distinct_fraction=distinct_fraction(reranked),
    )


def _samples(prompts: Sequence[EvalPrompt], answers: dict[str, list[Completion]]) -> list[Sample]:
    samples = []
    for index, prompt in enumerate(prompts):
        sample = Sample(id=prompt.id, dataset=prompt.dataset, kind=prompt.kind, prompt=prompt.prompt, answers={})
        for role, completions in answers.items():
            completion = completions[index]
            verdict = detect_refusal(completion.text)
            sample.answers[role] = completion.text
            sample.finished[role] = completion.finished
            sample.tokens[role] = len(completion.token_ids)
            sample.refused[role] = verdict.refused
            if verdict.rule:
                sample.refusal_rule[role] = verdict.rule
        samples.append(sample)
    return samples


def _win_rates(outcomes: Sequence[WinOutcome], prompts: Sequence[EvalPrompt], cfg: RunConfig) -> list[WinRateEntry]:
    """One entry per (data set, axis, model, baseline), plus the pooled 'all' entry per (axis, model, baseline)."""
    dataset_of = {p.id: p.dataset for p in prompts}
    groups: dict[tuple[str, str, str, str], list[WinOutcome]] = {}
    for o in outcomes:
        groups.setdefault((POOLED, o.axis, o.model, o.baseline), []).append(o)
        groups.setdefault((dataset_of[o.prompt_id], o.axis, o.model, o.baseline), []).append(o)
    entries = []
    for (dataset, axis, model, baseline), members in groups.items():
        stats = win_rate(
            [o.p for o in members],
            tie_margin=cfg.eval.tie_margin,
            flips=[f for o in members for f in o.flips],
            resamples=cfg.eval.bootstrap_resamples,
            seed=cfg.seed,
        )
        entries.append(WinRateEntry(dataset=dataset, axis=axis, model=model, baseline=baseline, stats=stats))  # type: ignore[arg-type]
    return entries


def _refusal_rates(samples: Sequence[Sample], roles: Sequence[str]) -> list[RefusalEntry]:
    """Refusal rates per prompt kind (harmful and safe_lookalike first), role and detector."""
    kinds = sorted({s.kind for s in samples}, key=lambda k: (k not in (HARMFUL, SAFE_LOOKALIKE), k))
    entries = []
    for kind in kinds:
        members = [s for s in samples if s.kind == kind]
        for role in roles:
            entries.append(
                RefusalEntry(
                    group=kind, model=role, detector="patterns", stats=rate([s.refused[role] for s in members])
                )
            )  # type: ignore[arg-type]
            if all(role in s.refusal_judge for s in members):
                flags = [s.refusal_judge[role] > 0.5 for s in members]
                entries.append(
                    RefusalEntry(
                        group=kind,
                        model=role,  # type: ignore[arg-type]
                        detector="judge",
                        stats=rate(flags),
                        mean_p=sum(s.refusal_judge[role] for s in members) / len(members),
                        agreement=sum(f == s.refused[role] for f, s in zip(flags, members, strict=True)) / len(members),
                    )
                )
    return entries


def _reward_section(
    path: str,
    models: dict[str, str],
    prompts: Sequence[EvalPrompt],
    texts: dict[str, list[str]],
    samples: Sequence[Sample],
    outcomes: Sequence[WinOutcome],
    ai_heldout_pairs: Sequence[LabelRecord],
    human_pairs: Sequence[HumanPair],
    score: ScoreFn | None = None,
    known: dict[str, list[float]] | None = None,
) -> RewardModelSummary:
    """RM scores of every answer, RM accuracy on AI and human pairs, RM vs judge on aligned vs base.

    `score` is the reward model when the caller already loaded it; `known` maps model names to scores already
    computed (the best-of-n choices), which are not scored again."""

    log.info("scoring the answers with the reward model %s", path)
    score = score or reward_score_fn(path)
    scored: dict[str, list[float]] = dict(known or {})
    for role, name in models.items():
        if name not in scored:
            scored[name] = score([p.prompt for p in prompts], texts[role]).tolist()
        for sample, value in zip(samples, scored[name], strict=True):
            sample.rewards[role] = value
    summary = RewardModelSummary(path=str(path))
    if ai_heldout_pairs:
        result = evaluate_reward_model(path, list(ai_heldout_pairs))
        summary.accuracy_ai_heldout, summary.pairs_ai_heldout = result["accuracy"], int(result["pairs"])
    if human_pairs:
        result = evaluate_reward_model(path, human_pairs)
        summary.accuracy_human, summary.pairs_human = result["accuracy"], int(result["pairs"])
    if "aligned" in models and "base" in models:
        # The judge's view of each prompt: the mean of its aligned-vs-base preferences over the axes judged.
        judge_p: dict[str, list[float]] = {}
        for o in outcomes:
            if (o.model, o.baseline) == ("aligned", "base"):
                judge_p.setdefault(o.prompt_id, []).append(o.p)
        rm_wins, judge_soft, agree, decided = [], [], 0, 0
        for sample in samples:
            if sample.id not in judge_p:
                continue
            margin = sample.rewards["aligned"] - sample.rewards["base"]
            p = sum(judge_p[sample.id]) / len(judge_p[sample.id])
            rm_wins.append(1.0 if margin > 0 else 0.0 if margin < 0 else 0.5)
            judge_soft.append(p)
            if margin != 0 and p != 0.5:
                decided += 1
                agree += (margin > 0) == (p > 0.5)
        if rm_wins:
            summary.rm_win_rate = sum(rm_wins) / len(rm_wins)
            summary.judge_win_rate = sum(judge_soft) / len(judge_soft)
            summary.rm_judge_gap = summary.rm_win_rate - summary.judge_win_rate
            summary.rm_judge_agreement = agree / decided if decided else None
    return summary


def _model_summaries(
    models: dict[str, str], answers: dict[str, list[Completion]], samples: Sequence[Sample]
) -> list[ModelSummary]:
    out = []
    for role, name in models.items():
        completions = answers[role]
        n = len(completions)
        rewards = [s.rewards[role] for s in samples if role in s.rewards]
        out.append(
            ModelSummary(
                role=role,  # type: ignore[arg-type]
                name=name,
                answers=n,
                mean_tokens=sum(len(c.token_ids) for c in completions) / n if n else 0.0,
                mean_chars=sum(len(c.text) for c in completions) / n if n else 0.0,
                empty=sum(not c.text.strip() for c in completions),
                unfinished=sum(not c.finished for c in completions),
                boilerplate=monitors.boilerplate([c.text for c in completions]),
                distinct_2=monitors.distinct_2([c.text for c in completions]),
                reward_mean=sum(rewards) / len(rewards) if rewards else None,
            )
        )
    return out


def _judge_alerts(labels: Sequence[LabelRecord], cfg: RunConfig) -> list[monitors.Alert]:
    """The judge quality gate (rlaif/evaluation/judge_gate.py) over the run's labels, as report alerts."""

    if not labels:
        return []
    metrics = label_metrics(labels)
    gate = check_labels(metrics, cfg.judge.gate)
    if gate.passed:
        return []
    flip = metrics.get("judge/flip_rate", 0.0)
    message = "; ".join(gate.findings) + f". {ADVICE}"
    return [
        monitors.Alert(
            step=-1, monitor="judge_quality", value=flip, threshold=cfg.judge.gate.max_flip_rate, message=message
        )
    ]


def _answer_alerts(summaries: Sequence[ModelSummary], cfg: RunConfig) -> list[monitors.Alert]:
    """Evaluation-time monitors on the answers: a sentence or bigrams repeated in the SFT and aligned answers
    (collapse), boilerplate in the evaluated model, its length against its start."""
    roles = {s.role: s for s in summaries}
    top = roles.get("aligned") or roles.get("sft")
    if top is None:
        return []
    limits = cfg.eval.monitor
    alerts = []
    for trained in [s for s in summaries if s.role in ("sft", "aligned")]:  # collapse of a trained policy
        shared = trained.boilerplate
        if shared.fraction > limits.answer_boilerplate_max and (
            round(shared.fraction * shared.answers) >= limits.answer_boilerplate_min_count
        ):
            alerts.append(
                monitors.Alert(
                    step=-1,
                    monitor="answer_boilerplate",
                    value=shared.fraction,
                    threshold=limits.answer_boilerplate_max,
                    message=f"{shared.fraction:.0%} of the {trained.role} answers contain {shared.sentence[:80]!r}",
                )
            )
        if trained.distinct_2 is not None and trained.distinct_2 < limits.distinct_2_min:
            alerts.append(
                monitors.Alert(
                    step=-1,
                    monitor="repetition",
                    value=trained.distinct_2,
                    threshold=limits.distinct_2_min,
                    message=f"the {trained.role} answers repeat themselves: distinct-2 {trained.distinct_2:.2f}",
                )
            )
    if top.boilerplate.fraction > limits.boilerplate_max:
        alerts.append(
            monitors.Alert(
                step=-1,
                monitor="boilerplate",
                value=top.boilerplate.fraction,
                threshold=limits.boilerplate_max,
                message=f"{top.boilerplate.fraction:.0%} of the {top.role} answers contain {top.boilerplate.sentence[:80]!r}",
            )
        )
    start = roles.get("sft") if top.role == "aligned" and "sft" in roles else roles.get("base")
    if start is not None and start is not top and start.mean_tokens > 0:
        ratio = top.mean_tokens / start.mean_tokens
        if ratio > limits.length_drift_max or ratio < 1 / limits.length_drift_max:
            alerts.append(
                monitors.Alert(
                    step=-1,
                    monitor="length_drift",
                    value=ratio,
                    threshold=limits.length_drift_max,
                    message=f"{top.role} answers are x{ratio:.2f} the length of the {start.role} answers",
                )
            )
    return alerts


def _training_curves(history: Sequence[dict[str, Any]]) -> TrainingCurves:
    steps = [int(r.get("step", i)) for i, r in enumerate(history)]
    series: dict[str, list[float | None]] = {}
    for key in TRAINING_KEYS:
        values = [r.get(key) for r in history]
        if any(isinstance(v, int | float) for v in values):
            series[key] = [float(v) if isinstance(v, int | float) else None for v in values]
    return TrainingCurves(steps=steps, series=series)


def _pick_samples(samples: Sequence[Sample], n: int, seed: int) -> list[Sample]:
    """n samples, round-robin over the data sets so every set shows (seeded order within a set)."""
    by_set: dict[str, list[Sample]] = {}
    for sample in samples:
        by_set.setdefault(sample.dataset, []).append(sample)
    rng = random.Random(f"samples:{seed}")
    queues = [rng.sample(members, len(members)) for members in by_set.values()]
    picked: list[Sample] = []
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def ppo_history_with_boilerplate(metrics_path: Path, samples_path: Path | None = None) -> list[dict[str, Any]]:
    """PPO metric records; `val/boilerplate_fraction` is filled in per update from samples.jsonl when present."""
    if not metrics_path.is_file():
        return []
    history = [dict(r) for r in iter_jsonl_dicts(metrics_path)]
    if samples_path is not None and samples_path.is_file():
        responses: dict[int, list[str]] = {}
        for row in iter_jsonl_dicts(samples_path):
            if isinstance(row.get("step"), int) and isinstance(row.get("response"), str):
                responses.setdefault(row["step"], []).append(row["response"])
        for record in history:
            step = record.get("step")
            if monitors.BOILERPLATE_KEY not in record and step in responses:
                record[monitors.BOILERPLATE_KEY] = monitors.boilerplate(responses[step]).fraction
    return history


def write_report(out_dir: Path, report: EvalReport, samples: Sequence[Sample]) -> list[str]:
    """answers.jsonl, report.json and report.html in out_dir (atomically); returns the file names."""
    write_jsonl(out_dir / ANSWERS_FILE, samples)
    atomic_write_json(out_dir / REPORT_FILE, report.model_dump(mode="json"))
    atomic_write_text(out_dir / REPORT_HTML_FILE, render_html(report))
    return [ANSWERS_FILE, REPORT_FILE, REPORT_HTML_FILE]


def report_metrics(report: EvalReport) -> dict[str, float]:
    """Headline figures as namespaced metrics (eval/*) for the StageResult and the run's metrics."""
    top = report.top_model
    out: dict[str, float] = {}
    for axis in ("harmless", "helpful"):
        for baseline in ("base", "sft"):
            stats = report.win_rate(axis, top, baseline)
            if stats is not None:
                out[f"eval/{axis}_win_rate_vs_{baseline}"] = stats.win_rate
    for group, key in ((HARMFUL, "refusal_rate_harmful"), (SAFE_LOOKALIKE, "over_refusal_rate")):
        for detector, suffix in (("patterns", ""), ("judge", "_judge")):
            stats = report.refusal(group, top, detector)
            if stats is not None:
                out[f"eval/{key}{suffix}"] = stats.rate
    for axis in ("harmless", "helpful"):  # the best-of-n baseline: it vs base, the evaluated model vs it
        for key, (model, baseline) in (
            (f"eval/best_of_n_{axis}_win_rate_vs_base", (BEST_OF_N, "base")),
            (f"eval/{axis}_win_rate_vs_best_of_n", (top, BEST_OF_N)),
        ):
            stats = report.win_rate(axis, model, baseline)
            if stats is not None:
                out[key] = stats.win_rate
    if report.best_of_n is not None:
        out["eval/best_of_n_reward_gain"] = report.best_of_n.mean_best_score - report.best_of_n.mean_candidate_score
    if report.kl_to_sft is not None:
        out["eval/kl_to_sft"] = report.kl_to_sft.mean
    if report.judge_audit is not None:
        out["eval/judge_agreement"] = float(report.judge_audit["agreement"])
        out["eval/judge_flip_rate"] = float(report.judge_audit["flip_rate"])
    if report.reward is not None:
        for key in ("accuracy_ai_heldout", "accuracy_human", "rm_judge_gap"):
            value = getattr(report.reward, key)
            if value is not None:
                out[f"eval/rm_{key.removeprefix('rm_')}"] = value
    out["eval/alerts"] = float(len(report.alerts) + (len(report.monitors.alerts) if report.monitors else 0))
    return out


def online_dpo_label_stats(ctx: StageContext) -> LabelSummary | None:
    """Per-principle statistics of the labels the run's (last) online DPO stage judged at its steps, marked source
    online_dpo; None when the run has no online DPO stage or it stored no labels."""
    stage = ctx.source("online_labels")
    if stage is None:
        return None
    labels = read_step_labels(ctx.store.stage_dir(ctx.run_id, stage, create=False) / STEP_LABELS_DIR)
    return principle_stats(labels, "online_dpo", stage) if labels else None


def _stage_long_items(ctx: StageContext, labels: Sequence[LabelRecord], judge_stage: str) -> dict[str, LongItems]:
    """The run's critique records and judge labels that were cut to fit the context (for the report)."""

    out: dict[str, LongItems] = {}
    records_path = (
        ctx.store.stage_dir(ctx.run_id, ctx.source("critique") or "critique", create=False) / CRITIQUE_RECORDS_FILE
    )
    if records_path.is_file():
        records = read_jsonl(records_path, CritiqueRecord)
        out["critique"] = LongItems.of([r.id for r in records if any(f.endswith(TRUNCATED) for f in r.flags)])
    if labels:
        out[judge_stage] = LongItems.of([label.id for label in labels if label.truncated])
    return out


def run_usage(ctx: StageContext) -> list[UsageEntry]:
    """Endpoint usage of every stage of the run (plan order) from their ledgers, this evaluation's judging included."""
    entries = []
    for spec in plan(ctx.cfg):
        folder = ctx.store.stage_dir(ctx.run_id, spec.name, create=False)
        entries += [UsageEntry(stage=spec.name, role=role, **total) for role, total in read_usage(folder).items()]
    return entries


def stage_result(stage: str, report: EvalReport, outputs: list[str]) -> StageResult:
    own = ("evaluation answers", "evaluation pairs", "human pairs")
    # The evaluation's own judging, as the critique and judge stages count theirs (judge_requests, ...).
    usage = {e.role: e.model_dump(exclude={"stage", "role"}) for e in report.usage if e.stage == stage}
    return StageResult(
        stage=stage,
        outputs=[f"{stage}/{name}" for name in outputs],
        counts={
            "prompts": sum(report.prompts.values()),
            **{f"prompts_{k}": v for k, v in report.prompts.items()},
            "truncated": sum(report.long_items[k].truncated for k in own if k in report.long_items),
            **usage_counts(usage),
        },
        metrics=report_metrics(report),
        extra={
            "headline": headline(report),
            "long_items": {k: v.model_dump() for k, v in report.long_items.items() if k in own},
            **({"usage": usage} if usage else {}),
        },
    )


def run_evaluate(ctx: StageContext, *, data_dir: Path | None = None, progress: bool = True) -> StageResult:
    """Evaluate the run's models (base, SFT, the final policy); writes <run>/<stage>/{answers.jsonl, report.json,
    report.html, manifest.json}, then puts the headline figures into the final policy's meta.json and model card.

    `data_dir` (default `settings.data_dir`, i.e. RLAIF_DATA_DIR) holds the named sets of eval.extra_sets and the
    human pairs; the run's labels and PPO metrics are read when the run has them (a DPO run has no PPO monitors and
    no reward-model section). `ctx.models` may override a role (base, sft, policy, reward_model; None = leave it
    out: policy None evaluates the SFT model as the top model). A redelivered task finds the report finished and
    rewrites the same card. The model folders are verified only before the evaluation: afterwards the policy folder
    is the one being rewritten, and a worker that died between its card and its manifest must be able to finish.
    """
    cfg, store, run_id, stage, out_dir = ctx.cfg, ctx.store, ctx.run_id, ctx.name, ctx.out_dir
    if ctx.constitution is None:
        raise StoreError(f"run {run_id}: the evaluation needs the run's constitution (inputs/constitution.json)")
    # The evaluation loads each model it needs in turn: drop the ones this worker kept for earlier shards.
    release_cached_generator()
    release_cached_judge()
    complete = store.is_complete(run_id, stage)
    models = {"base": ctx.models.get("base", cfg.policy_model)}
    for role, key in (("sft", "sft"), ("aligned", "policy")):
        if ctx.models.get(key, "") is not None and ctx.has_model(key):
            models[role] = ctx.model(key, verify=not complete)
    reward_model = ctx.model("reward_model", verify=not complete) if _has(ctx, "reward_model") else None
    if complete:
        verify_manifest(out_dir)
        report = read_report(out_dir / REPORT_FILE)
        log.info("%s of run %s is already complete; not evaluating again", stage, run_id)
        result = stage_result(stage, report, [ANSWERS_FILE, REPORT_FILE, REPORT_HTML_FILE])
    else:
        result = _evaluate(ctx, models, reward_model, data_dir, progress)
    if "aligned" in models and not ctx.models:  # (a run's own policy: its card gets the headline)
        add_evaluation_to_checkpoint(Path(models["aligned"]), read_report(out_dir / REPORT_FILE), result.metrics, stage)
    return result


def _has(ctx: StageContext, role: str) -> bool:
    return ctx.models.get(role, "") is not None and ctx.has_model(role)


def _evaluate(
    ctx: StageContext, models: dict[str, str], reward_model: str | None, data_dir: Path | None, progress: bool
) -> StageResult:
    cfg, store, run_id, stage, out_dir = ctx.cfg, ctx.store, ctx.run_id, ctx.name, ctx.out_dir
    if data_dir is None:
        data_dir = settings.data_dir
    if len(models) < 2:
        raise ValueError(f"run {run_id}: evaluation needs the base model and at least one of sft_model / policy_model")
    prompts = load_eval_prompts(store, run_id, cfg.eval, data_dir, cfg.seed)
    human_pairs: list[HumanPair] = []
    if cfg.eval.human_pairs:
        human_pairs = load_human_pairs(
            set_path(data_dir, "preference_pairs", cfg.eval.data_split, "eval.human_pairs"), limit=cfg.eval.human_pairs
        )
    judge_stage = ctx.source("labels")
    labels_path = store.stage_dir(run_id, judge_stage, create=False) / LABELS_FILE if judge_stage else None
    labels = read_jsonl(labels_path, LabelRecord) if labels_path is not None and labels_path.is_file() else []
    ai_heldout: list[LabelRecord] = []
    if reward_model is not None and labels:
        # The same split the reward-model stage made (rlaif/stages/reward_model.py), so these pairs were unseen.
        _, held = split_holdout(len(labels), cfg.reward_model.eval_fraction, cfg.seed)
        ai_heldout = [labels[i] for i in held]
    history: list[dict[str, Any]] = []
    ppo_stage = ctx.source("ppo")  # (None in a DPO run: the PPO monitors read PPO metrics)
    if ppo_stage is not None:
        ppo_dir = store.stage_dir(run_id, ppo_stage, create=False)
        history = ppo_history_with_boilerplate(ppo_dir / METRICS_FILE, ppo_dir / PPO_SAMPLES_FILE)
    log.info(
        "evaluating run %s: %d prompts (%s), models %s",
        run_id,
        len(prompts),
        ", ".join(sorted({p.dataset for p in prompts})),
        models,
    )
    report, samples = evaluate_models(
        models,
        prompts,
        cfg,
        ctx.constitution,
        reward_model=reward_model,
        ai_heldout_pairs=ai_heldout,
        human_pairs=human_pairs,
        labels=labels,
        labels_stage=judge_stage,
        online_labels=online_dpo_label_stats(ctx),
        ppo_history=history,
        run_id=run_id,
        stage_long_items=_stage_long_items(ctx, labels, judge_stage or "judge"),
        stage_dir=out_dir,
        progress=progress,
        check=ctx.hooks.check,
    )
    report.usage = run_usage(ctx)
    outputs = write_report(out_dir, report, samples)
    write_manifest(out_dir, extra={"stage": stage, "metrics": report_metrics(report)})
    log.info("evaluation of run %s written to %s\n%s", run_id, out_dir, headline(report))
    return stage_result(stage, report, outputs)


def add_evaluation_to_checkpoint(folder: Path, report: EvalReport, metrics: dict[str, float], stage: str) -> None:
    """Put the evaluation into a checkpoint folder: eval/* metrics and a pointer to the report in meta.json,
    the headline block in the model card (README.md), then the manifest again, last. Idempotent."""
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
