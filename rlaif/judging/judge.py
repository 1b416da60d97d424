"""Judge pairs of responses under principles: both orders, option log-probs, one forward pass per batch.

    from rlaif.judging import judge_pair
    verdict = judge_pair(model, tokenizer, "How do I pick a lock?", "I can't help with that.", "Use a pick.", principle)
    verdict.p_a_mean  # P(response_a is better), position-debiased

Every pair becomes two prompts, (A)=response_a and (A)=response_b; `judge_requests` scores all of them together
(`scoring.score_options`), reads P(A) over the two options, and averages the orders (`labels.combine_orders`).
With chain of thought the judge first writes its reasoning with a Generator, the option log-probs are read after
"So the answer is: (", and each order's P(A) is clamped to `cot_clamp` before averaging (Bai et al. 2022 sec. 4.1).

A pair whose judge prompt is longer than the limit (judge.max_length, default the judge model's context) is not an
error: `fit_requests` cuts the middle of its prompt and responses, longest first, keeping the principle's question,
the options and the instruction whole (rlaif/truncation.py); its judgement says `truncated`.

The judge is a loaded causal LM (scored in process, `scoring.ModelScorer`) or any `scoring.OptionScorer`, such
as an endpoint (`rlaif.judging.endpoint.EndpointScorer`): everything else, the prompts, the fitting, both orders
and the arithmetic, is this one code path. Each judgement records how its options were read and their coverage.

`judge_comparisons` labels many comparisons: `principles_per_label` principles drawn per comparison (seeded by its
id), each judged in both orders, ensembled into one LabelRecord. The judge stage (rlaif/stages/judge.py), online
DPO, the evaluation's win rates (rlaif/evaluation/compare.py) and the judge audit (audit.py) all label with it.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from tqdm.auto import tqdm

from rlaif.config import JudgeConfig, SamplingConfig
from rlaif.constitution import ComparisonExample, Constitution, Principle, sample_principles
from rlaif.endpoints import is_endpoint
from rlaif.generation.common import derive_seed
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.labels import clamp, combine_orders, ensemble
from rlaif.judging.prompts import (
    ANSWER_PREFIX,
    COT_ANSWER_PREFIX,
    JudgeInputError,
    JudgePrompt,
    assistant_prefill,
    encode_judge_text,
    judge_messages,
    option_token_ids,
    render_judge_text,
)
from rlaif.judging.scoring import ModelScorer, OptionScorer, OptionScores, PrefixCache
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.records import Comparison, LabelRecord, PairJudgement
from rlaif.truncation import fit_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.generation import Conversation, Generator

log = logging.getLogger(__name__)

DEFAULT_COT_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=96)
CHUNK_COMPARISONS = 256  # comparisons scored together: enough prompts per principle group to fill batches


class JudgeRequest(NamedTuple):
    """One pair to judge under one principle; both orders are built from it."""

    item_id: str
    prompt: str
    response_a: str
    response_b: str
    principle: Principle


def _check(request: JudgeRequest) -> None:
    for field in ("prompt", "response_a", "response_b"):
        if not isinstance(getattr(request, field), str):
            raise JudgeInputError(f"comparison {request.item_id!r}: {field} must be a string")
    if not request.prompt.strip():
        raise JudgeInputError(f"comparison {request.item_id!r}: empty prompt")


def _order_messages(
    request: JudgeRequest, examples: Sequence[ComparisonExample], chain_of_thought: bool
) -> tuple[Conversation, Conversation]:
    """(response_a shown as (A), response_b shown as (A))."""
    first = judge_messages(
        request.prompt, request.response_a, request.response_b, request.principle, examples, chain_of_thought
    )
    second = judge_messages(
        request.prompt, request.response_b, request.response_a, request.principle, examples, chain_of_thought
    )
    return first, second


def context_limit(model: PreTrainedModel | OptionScorer, max_length: int | None = None) -> int:
    """The longest judge prompt allowed: the model's context, or judge.max_length if that is shorter."""
    if isinstance(model, OptionScorer):
        model_context = model.context
    else:
        model_context = getattr(model.config, "max_position_embeddings", None)
    if max_length is None:
        if not model_context:
            raise ValueError("the judge model does not say its context length: set judge.max_length")
        return int(model_context)
    return min(max_length, model_context) if model_context else max_length


def fit_requests(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[JudgeRequest],
    limit: int,
    *,
    examples: Sequence[ComparisonExample] = (),
    chain_of_thought: bool = False,
    reserve: int = 0,
) -> tuple[list[JudgeRequest], list[bool]]:
    """The requests with prompt and responses cut so that both orders' judge prompts fit `limit` tokens, and
    which were cut. `reserve` tokens are kept free (the chain of thought written into the prompt).

    Both orders show the same cut texts. ContextOverflow when the uncut parts alone exceed the limit.
    """
    prefix = COT_ANSWER_PREFIX if chain_of_thought else ANSWER_PREFIX
    fitted: list[JudgeRequest] = []
    cut_flags: list[bool] = []
    for request in requests:
        _check(request)

        def measure(texts: Sequence[str], request: JudgeRequest = request) -> int:
            candidate = request._replace(prompt=texts[0], response_a=texts[1], response_b=texts[2])
            return reserve + max(
                len(encode_judge_text(tokenizer, render_judge_text(tokenizer, messages, prefix)))
                for messages in _order_messages(candidate, examples, chain_of_thought)
            )

        texts, cut = fit_texts(
            tokenizer,
            [request.prompt, request.response_a, request.response_b],
            measure,
            limit,
            f"comparison {request.item_id!r} (principle {request.principle.id!r}; judge.max_length, judge.few_shot)",
        )
        fitted.append(request._replace(prompt=texts[0], response_a=texts[1], response_b=texts[2]) if cut else request)
        cut_flags.append(cut)
    return fitted, cut_flags


def build_prompts(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[JudgeRequest],
    *,
    examples: Sequence[ComparisonExample] = (),
    reasoning: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[JudgePrompt]:
    """The 2N judge prompts: row 2i is request i in order, row 2i+1 with the responses swapped.

    `reasoning` (2N generated chains of thought, same rows) switches to the chain-of-thought prompt.
    """
    chain_of_thought = reasoning is not None
    prompts: list[JudgePrompt] = []
    for index, request in enumerate(requests):
        _check(request)
        for order, messages in enumerate(_order_messages(request, examples, chain_of_thought)):
            row = 2 * index + order
            prefill = assistant_prefill(reasoning[row] if reasoning is not None else None)
            text = render_judge_text(tokenizer, messages, prefill)
            ids = encode_judge_text(tokenizer, text)
            if limit is not None and len(ids) > limit:
                raise JudgeInputError(
                    f"comparison {request.item_id!r} (principle {request.principle.id!r}, "
                    f"{'swapped' if order else 'original'} order): the judge prompt is {len(ids)} tokens, "
                    f"longer than the limit of {limit} (judge.max_length or the model's context)"
                )
            prompts.append(JudgePrompt(messages=messages, prefill=prefill, text=text, ids=ids))
    return prompts


def build_sequences(
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[JudgeRequest],
    *,
    examples: Sequence[ComparisonExample] = (),
    reasoning: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[list[int]]:
    """Token ids of the 2N judge prompts of `build_prompts` (same rows)."""
    return [p.ids for p in build_prompts(tokenizer, requests, examples=examples, reasoning=reasoning, limit=limit)]


def generate_reasoning(
    generator: Generator,
    requests: Sequence[JudgeRequest],
    examples: Sequence[ComparisonExample],
    sampling: SamplingConfig,
    seed: int,
    progress: bool = False,
) -> list[str]:
    """The judge's chain of thought for both orders of every request (2N texts, rows as in build_sequences).
    Each text is sampled under a seed from (seed, comparison id, principle id, order), so it does not depend on
    which requests share the call."""
    conversations: list[Conversation] = []
    seeds: list[int] = []
    for request in requests:
        _check(request)
        conversations.extend(_order_messages(request, examples, chain_of_thought=True))
        seeds += [derive_seed(seed, request.item_id, request.principle.id, order) for order in (1, 2)]
    completions = generator.generate(conversations, n=1, sampling=sampling, seed=seeds, progress=progress)
    return [choices[0].text for choices in completions]


def as_scorer(
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 8,
    share_prefix: bool = True,
    prefix_cache: PrefixCache | None = None,
) -> OptionScorer:
    """The judge as a scorer: a scorer as it is, a loaded causal LM scored in process (ModelScorer)."""
    if isinstance(model, OptionScorer):
        return model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return ModelScorer(
        model, batch_size=batch_size, share_prefix=share_prefix, pad_id=pad_id, prefix_cache=prefix_cache
    )


def score_requests(
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[JudgeRequest],
    *,
    examples: Sequence[ComparisonExample] = (),
    batch_size: int = 8,
    max_length: int | None = None,
    share_prefix: bool = True,
    chain_of_thought: bool = False,
    generator: Generator | None = None,
    cot_sampling: SamplingConfig = DEFAULT_COT_SAMPLING,
    seed: int = 0,
    prefix_cache: PrefixCache | None = None,
    progress: bool = False,
    fit: bool = True,
) -> OptionScores:
    """P(A), the option mass and how they were read, for the 2N judge prompts (rows 2i, 2i+1 = the two orders of
    request i). `model` is a loaded causal LM or an OptionScorer (an endpoint).

    With `fit` (default) long requests are first cut to the limit (`fit_requests`); judge_requests fits them
    itself, to know which were cut, and passes fit=False.
    """
    limit = context_limit(model, max_length)
    if fit:
        reserve = cot_sampling.max_new_tokens if chain_of_thought else 0
        requests, _ = fit_requests(
            tokenizer, requests, limit, examples=examples, chain_of_thought=chain_of_thought, reserve=reserve
        )
    reasoning = None
    if chain_of_thought:
        if generator is None:
            raise ValueError("chain-of-thought judging needs a generator to write the reasoning")
        reasoning = generate_reasoning(generator, requests, examples, cot_sampling, seed, progress)
    option_ids = option_token_ids(tokenizer, COT_ANSWER_PREFIX if chain_of_thought else ANSWER_PREFIX)
    prompts = build_prompts(tokenizer, requests, examples=examples, reasoning=reasoning, limit=limit)
    # Few-shot turns carry the principle's question, so only prompts of one principle share a long prefix (group);
    # all prompts of one pair share the conversation (family: both orders, and every principle without few-shot).
    groups = [r.principle.id if examples else "" for r in requests for _ in range(2)]
    families = [r.item_id for r in requests for _ in range(2)]
    scorer = as_scorer(model, tokenizer, batch_size=batch_size, share_prefix=share_prefix, prefix_cache=prefix_cache)
    return scorer.score_prompts(prompts, option_ids, groups=groups, families=families, progress=progress)


def judgements_from_scores(
    scores: OptionScores,
    requests: Sequence[JudgeRequest],
    clamp_bounds: tuple[float, float] | None = None,
    truncated: Sequence[bool] | None = None,
) -> list[PairJudgement]:
    """Pair up the two orders of each request (scored in order by `score_requests`): P(A) over two options,
    optional clamp, both-order average; each judgement carries its request's principle, the mean coverage of its
    two orders (None where unknown) and the scorer's method."""
    p_a = scores.p_a.tolist()
    mass = scores.option_mass.tolist()
    out: list[PairJudgement] = []
    for index, request in enumerate(requests):
        first, second = p_a[2 * index], p_a[2 * index + 1]
        if clamp_bounds is not None:
            first, second = clamp(first, clamp_bounds), clamp(second, clamp_bounds)
        coverage = (mass[2 * index] + mass[2 * index + 1]) / 2
        out.append(
            combine_orders(
                first,
                second,
                principle_id=request.principle.id,
                truncated=truncated is not None and bool(truncated[index]),
                coverage=None if math.isnan(coverage) else coverage,
                method=scores.method,
            )
        )
    return out


class JudgeOptions(TypedDict):
    """The keyword arguments of `judge_requests` that come from a JudgeConfig (and its constitution's examples)."""

    examples: Sequence[ComparisonExample]
    batch_size: int
    max_length: int | None
    share_prefix: bool
    chain_of_thought: bool
    cot_sampling: SamplingConfig
    cot_clamp: tuple[float, float]


def judge_options(cfg: JudgeConfig, constitution: Constitution) -> JudgeOptions:
    """`judge_requests(model, tokenizer, requests, **judge_options(cfg, constitution), seed=..., ...)`: one place
    that maps the judge config onto the scorer, so the judge stage and the revision filter cannot drift apart."""
    return JudgeOptions(
        examples=constitution.comparison_examples[: cfg.few_shot],
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        share_prefix=cfg.share_prefix,
        chain_of_thought=cfg.chain_of_thought,
        cot_sampling=cfg.cot_sampling,
        cot_clamp=cfg.cot_clamp,
    )


def judge_requests(
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[JudgeRequest],
    *,
    examples: Sequence[ComparisonExample] = (),
    batch_size: int = 8,
    max_length: int | None = None,
    share_prefix: bool = True,
    chain_of_thought: bool = False,
    generator: Generator | None = None,
    cot_sampling: SamplingConfig = DEFAULT_COT_SAMPLING,
    cot_clamp: tuple[float, float] = (0.4, 0.6),
    seed: int = 0,
    prefix_cache: PrefixCache | None = None,
    progress: bool = False,
) -> list[PairJudgement]:
    """One PairJudgement per request, in order; a request cut to fit the limit gives `truncated=True`.
    `model` is a loaded causal LM or an OptionScorer (an endpoint: rlaif.judging.endpoint)."""
    if not requests:
        return []
    reserve = cot_sampling.max_new_tokens if chain_of_thought else 0
    requests, cut = fit_requests(
        tokenizer,
        requests,
        context_limit(model, max_length),
        examples=examples,
        chain_of_thought=chain_of_thought,
        reserve=reserve,
    )
    scores = score_requests(
        model,
        tokenizer,
        requests,
        examples=examples,
        batch_size=batch_size,
        max_length=max_length,
        share_prefix=share_prefix,
        chain_of_thought=chain_of_thought,
        generator=generator,
        cot_sampling=cot_sampling,
        seed=seed,
        prefix_cache=prefix_cache,
        progress=progress,
        fit=False,
    )
    return judgements_from_scores(scores, requests, cot_clamp if chain_of_thought else None, cut)


def judge_pair(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response_a: str,
    response_b: str,
    principle: Principle,
    *,
    examples: Sequence[ComparisonExample] = (),
    max_length: int | None = None,
    chain_of_thought: bool = False,
    generator: Generator | None = None,
    cot_sampling: SamplingConfig = DEFAULT_COT_SAMPLING,
    cot_clamp: tuple[float, float] = (0.4, 0.6),
    seed: int = 0,
) -> PairJudgement:
    """P(response_a is better than response_b) under `principle`: both orders in one forward pass (batch of 2)."""
    request = JudgeRequest("pair", prompt, response_a, response_b, principle)
    return judge_requests(
        model,
        tokenizer,
        [request],
        examples=examples,
        batch_size=2,
        max_length=max_length,
        chain_of_thought=chain_of_thought,
        generator=generator,
        cot_sampling=cot_sampling,
        cot_clamp=cot_clamp,
        seed=seed,
    )[0]


def principles_for(comparison_id: str, selected: Sequence[Principle], k: int, seed: int) -> list[Principle]:
    """The k principles (drawn with replacement) that judge one comparison; depends only on (seed, id)."""
    return sample_principles(selected, k, random.Random(f"judge:{seed}:{comparison_id}"))


def judge_comparisons(
    comparisons: Iterable[Comparison],
    model: PreTrainedModel | OptionScorer,
    tokenizer: PreTrainedTokenizerBase,
    constitution: Constitution,
    principles: Sequence[str] | None,
    cfg: JudgeConfig,
    seed: int,
    *,
    generator: Generator | None = None,
    progress: bool = True,
) -> Iterator[LabelRecord]:
    """LabelRecords in input order, yielded chunk by chunk (both orders x principles per comparison, batched).

    `model` is the judge: a loaded causal LM, or an OptionScorer such as rlaif.judging.endpoint.EndpointScorer
    (with its tokenizer). `principles` are ids or tag:<tag> selectors (None = all); `generator` is needed only for
    chain of thought.
    """
    selected = constitution.select(principles)
    options = judge_options(cfg, constitution)
    items = list(comparisons)
    seen: set[str] = set()
    for comparison in items:
        if comparison.id in seen:
            raise ValueError(f"comparison {comparison.id!r} appears twice: ids must be unique")
        seen.add(comparison.id)
    # One prefix (system prompt + few-shot turns) per principle, kept across chunks.
    prefix_cache = PrefixCache(max_entries=len(selected) + 1)
    scorer = as_scorer(
        model, tokenizer, batch_size=cfg.batch_size, share_prefix=cfg.share_prefix, prefix_cache=prefix_cache
    )
    bar = tqdm(total=len(items), desc="judge", unit="pair", disable=not progress)
    for start in range(0, len(items), CHUNK_COMPARISONS):
        chunk = items[start : start + CHUNK_COMPARISONS]
        sampled = [principles_for(c.id, selected, cfg.principles_per_label, seed) for c in chunk]
        # A principle drawn twice for one pair gives the same judgement: score it once.
        requests: list[JudgeRequest] = []
        index: dict[tuple[str, str], int] = {}
        for comparison, chosen in zip(chunk, sampled, strict=True):
            for principle in chosen:
                key = (comparison.id, principle.id)
                if key not in index:
                    index[key] = len(requests)
                    requests.append(
                        JudgeRequest(
                            comparison.id, comparison.prompt, comparison.response_a, comparison.response_b, principle
                        )
                    )
        verdicts = judge_requests(
            scorer,
            tokenizer,
            requests,
            **options,
            generator=generator,
            seed=seed,
            prefix_cache=prefix_cache,
        )
        for comparison, chosen in zip(chunk, sampled, strict=True):
            pair_verdicts = [verdicts[index[(comparison.id, p.id)]] for p in chosen]
            coverages = [v.coverage for v in pair_verdicts if v.coverage is not None]
            yield LabelRecord(
                id=comparison.id,
                prompt=comparison.prompt,
                response_a=comparison.response_a,
                response_b=comparison.response_b,
                p_a=min(max(ensemble(pair_verdicts), 0.0), 1.0),
                judgements=pair_verdicts,
                truncated=any(v.truncated for v in pair_verdicts),
                coverage=sum(coverages) / len(coverages) if coverages else None,
                method=pair_verdicts[0].method,
            )
        bar.update(len(chunk))
    bar.close()


def cached_judge(model: str, dtype: str, *, stage_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a judge, kept for the next call: a worker labels shard after shard with one judge, and
    loading it costs seconds. For `endpoint:<name>`, (EndpointScorer, its tokenizer), one per stage folder (its
    cache and usage ledger live there)."""
    folder = str(stage_dir) if stage_dir is not None and is_endpoint(model) else None
    return _cached_judge(model, dtype, folder)


@functools.lru_cache(maxsize=1)
def _cached_judge(model: str, dtype: str, stage_dir: str | None) -> tuple[Any, Any]:
    if is_endpoint(model):
        scorer = EndpointScorer(model, stage_dir=None if stage_dir is None else Path(stage_dir))
        return scorer, scorer.tokenizer
    return load_causal_lm(model, dtype=dtype), load_tokenizer(model)


def release_cached_judge() -> None:
    """Drop the kept judge (the evaluation loads several models in turn)."""
    _cached_judge.cache_clear()
