"""Stage 1, SL-CAI (Bai et al. 2022 sec. 3.1): answer, then rounds of critique and revision -> SFT data.

For each prompt the model answers; then `critique.rounds` times, under a principle drawn independently for the
round (seeded per item, so a re-run or a different batching draws the same principles), it is asked the
principle's critique request, writes a critique, is asked the revision request and writes a revision. All of it is
one growing chat conversation. The constitution's first `critique.few_shot` worked examples are prepended to every
critique and revision call as earlier chat turns: without them a small model loses its point of view (it critiques
"the user" or answers the critique instead of revising). The first answer is generated without them, so it is
the model's own answer to the prompt.

Generation is batched across prompts: each step (answer, critique r, revision r) is one generate call over all
prompts of a batch. Every revision is cleaned (leading "Here is a revised response:", "Revision:", wrapping quotes,
'The assistant should have said: "..."') and checked per round: empty, meta-text (a critique or talk about the
response instead of a response), repetitive loops and few-shot copies (a critique or revision that repeats
`critique.few_shot_copy_words` words of a worked example that the item itself does not contain) block a revision;
unchanged-from-previous and truncated (cut at
max_new_tokens) are recorded. The final revision is the last unblocked one, and the record is kept for SFT when there
is one and it differs from the first answer. Prompts of kind `helpful` are only answered (no rounds): their plain
answers join the SFT data as kind "helpful" (sft.helpful_mix). A prompt or history that does not fit the model's context is cut by the
rule of rlaif/truncation.py (flag `truncated-to-fit`; the stage result's `long_items` lists the ids).

Then, when the run has the judge filter (critique.judge_filter; on by default when the judge is not the policy),
`judge_filter` keeps a revision only when the judge prefers it to the first answer in both orders under the
principle it was revised for (rlaif/judging/revision_filter.py; flags `judge:prefers-initial`,
`judge:split-orders`). The stage result counts what was kept and dropped, and why (`extra.dropped`).

    rlaif critique --constitution harmless --prompts examples/demo_prompts.jsonl --limit 3
    python -c "from rlaif.stages.critique_revise import run_critique_revise; help(run_critique_revise)"
"""

from __future__ import annotations

import logging
import random
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from tqdm.auto import tqdm

from rlaif.config import CritiqueConfig, RunConfig
from rlaif.constitution import Constitution, CritiqueExample, Principle, sample_principles
from rlaif.endpoints import read_usage, usage_counts
from rlaif.generation import Completion, Conversation, Generator, cached_generator
from rlaif.generation.backend_choice import BackendChoice, generation_backend
from rlaif.generation.common import derive_seed
from rlaif.judging.judge import cached_judge
from rlaif.judging.revision_filter import PREFERS_INITIAL, SPLIT_ORDERS, filter_revisions, needs_judging
from rlaif.prompts import normalise
from rlaif.records import CritiqueRecord, CritiqueRound, PromptItem, SFTExample
from rlaif.stages import CRITIQUE_RECORDS_FILE, PROMPTS_FILE, SFT_DATA_FILE, StageResult
from rlaif.stages.contract import StageContext, run_sharded
from rlaif.stages.judge import judge_generator
from rlaif.store import StoreError, read_jsonl, write_jsonl, write_manifest
from rlaif.truncation import LongItems

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlaif.judging.scoring import OptionScorer

log = logging.getLogger(__name__)

STAGE = "critique"

# ------------------------------------------------------------------ cleaning and quality checks

_LEADING_META = re.compile(
    r"""^\s*(?:
        (?:(?:sure|okay|ok|certainly|of\ course|absolutely)[,!.]?\s+)?
        here(?:'s|\ is|\ are)\s+(?:a|an|the|my)?\s*
        (?:revised|rewritten|updated|improved|new|edited|corrected|better|modified|final)\b[^:\n]{0,80}:
      | (?:revised|rewritten|updated|improved|new|edited|corrected|final)?\s*
        (?:revision|response|answer|version|reply)\s*:
      | assistant\s*:
    )\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_META_START = re.compile(
    r"""^(?:
        (?:the|this|that|your|my|its|their)\s+
        (?:(?:assistant|ai|model|chatbot)(?:'s)?\s+|original\s+|previous\s+|above\s+|last\s+|initial\s+|first\s+|preceding\s+)*
        (?:response|answer|reply)\b
      | the\s+(?:assistant|ai|model)\b
      | (?:critique|critique\s*request|revision\s*request|critiquerequest|revisionrequest)\s*:
      | (?:in|upon)\s+(?:the|this|my|your)\s+(?:response|answer|reply)\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_META_ANYWHERE = re.compile(r"critique\s*request|revision\s*request", re.IGNORECASE)


# "The assistant should have said: "..."", "A wise person would say, "..."": the revision is the quotation.
_QUOTED_INTRO = re.compile(
    r"""^(?P<intro>[^"\u201c\n]{0,160}?)\b(?:said|say|says|replied|reply|respond|responded|be|read|reads)\s*[:,]?\s*["\u201c]""",
    re.IGNORECASE,
)
_INTRO_SUBJECT = re.compile(
    r"\b(?:assistant|response|message|reply|revision|rewrite|rewritten|person|answer|ai)\b", re.IGNORECASE
)


def _unwrap_quotation(text: str) -> str:
    match = _QUOTED_INTRO.match(text)
    if not match or not _INTRO_SUBJECT.search(match.group("intro")):
        return text
    rest = text[match.end() :]
    close = min((i for i in (rest.find('"'), rest.find("\u201d")) if i >= 0), default=-1)
    return (rest[:close] if close >= 0 else rest).strip()


def clean_revision(text: str) -> tuple[str, bool]:
    """(revision without leading meta such as "Here is a revised response:" or wrapping quotes, whether any was cut)."""
    current = text.strip()
    original = current
    for _ in range(4):  # "Revision: "Here is ...: "..."" peels in a few passes; 4 is plenty
        before = current
        current = _unwrap_quotation(_LEADING_META.sub("", current, count=1).strip())
        if len(current) >= 2 and current[0] in _QUOTES and current[-1] == _QUOTES[current[0]]:
            current = current[1:-1].strip()
        if current == before:
            break
    return current, current != original


def is_meta_text(revision: str, critique: str = "") -> bool:
    """True when a 'revision' is really a critique or talk about the response instead of a new response."""
    if _META_START.match(revision) or _META_ANYWHERE.search(revision):
        return True
    return bool(critique.strip()) and normalise(revision) == normalise(critique)


def is_repetitive(text: str, min_words: int = 16, min_distinct: float = 0.4) -> bool:
    """True for a degenerate loop ("I'll use that. I'll use that. ..."): few distinct word trigrams."""
    words = text.lower().split()
    if len(words) < min_words:
        return False
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    return len(set(trigrams)) / len(trigrams) < min_distinct


def check_revision(revision: str, previous: str, critique: str, finished: bool = True) -> list[str]:
    """Quality flags of one cleaned revision.

    Blocking (the revision is never used as the final one): 'empty'; 'meta' (a critique or talk about the response
    instead of a response); 'repetitive' (a degenerate loop). Informational: 'unchanged' (same as the answer
    before it, normalised), 'truncated' (cut at max_new_tokens, not ended by the model).
    """
    if not revision.strip():
        return ["empty"]
    flags = []
    if is_meta_text(revision, critique):
        flags.append("meta")
    if is_repetitive(revision):
        flags.append("repetitive")
    if normalise(revision) == normalise(previous):
        flags.append("unchanged")
    if not finished:
        flags.append("truncated")
    return flags


_WORD = re.compile(r"[a-z0-9']+")


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The runs of n consecutive words of `text` (lower-cased, punctuation dropped)."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def copies_example(texts: Sequence[str], example_ngrams: set[tuple[str, ...]], own: str, n: int) -> bool:
    """True when one of `texts` (a critique, a revision) repeats n consecutive words of a few-shot example that are
    not in `own` (the item's prompt and first answer): the model continued the worked example instead of the item.
    A strong teacher does this often (the neighbour's-lock example's advice in answers about computers or piracy)."""
    if n == 0 or not example_ngrams:
        return False
    copied = set().union(*(word_ngrams(text, n) & example_ngrams for text in texts))
    return bool(copied - word_ngrams(own, n))


def example_ngrams(shots: Conversation, n: int) -> set[tuple[str, ...]]:
    """The n-word runs of the few-shot turns the model wrote (answers, critiques, revisions), not the requests."""
    if n == 0:
        return set()
    return set().union(*(word_ngrams(m["content"], n) for m in shots if m["role"] == "assistant"))


# A revision with these flags is never used as the final revision.
BLOCKING = {"empty", "meta", "repetitive", "few-shot-copy"}
# A prompt or history cut to fit the context (rlaif/truncation.py): informational, the record stays usable.
TRUNCATED = "truncated-to-fit"


# ------------------------------------------------------------------ conversation building


def few_shot_messages(constitution: Constitution, examples: Sequence[CritiqueExample]) -> Conversation:
    """Worked examples as earlier chat turns: prompt, answer, critique request, critique, revision request, revision."""
    messages: Conversation = []
    for example in examples:
        principle = constitution.principle(example.principle)
        messages += [
            {"role": "user", "content": example.prompt},
            {"role": "assistant", "content": example.response},
            {"role": "user", "content": principle.critique},
            {"role": "assistant", "content": example.critique},
            {"role": "user", "content": principle.revision},
            {"role": "assistant", "content": example.revision},
        ]
    return messages


class _Trajectory(NamedTuple):
    """One prompt in flight: its chat history (without few-shot turns) and the principles of its rounds."""

    item: PromptItem
    principles: list[Principle]
    history: Conversation


def principles_for(item_id: str, selected: Sequence[Principle], rounds: int, seed: int) -> list[Principle]:
    """One independently drawn principle per round; depends only on (seed, item id)."""
    return sample_principles(selected, rounds, random.Random(f"critique:{seed}:{item_id}"))


def validate_items(items: Sequence[PromptItem]) -> None:
    """ValueError naming the item for an empty prompt or a repeated id."""
    seen: set[str] = set()
    for item in items:
        if not item.prompt.strip():
            raise ValueError(f"prompt item {item.id!r}: empty prompt")
        if item.id in seen:
            raise ValueError(f"prompt item {item.id!r}: duplicate id")
        seen.add(item.id)


def _generate(
    generator: Generator,
    conversations: list[Conversation],
    batch: Sequence[PromptItem],
    cfg: CritiqueConfig,
    seed: int,
    what: str,
) -> list[Completion]:
    """One batched generate call; a backend error about 'conversation i' is re-raised naming the prompt item.
    Each item samples under its own seed (from `seed`, its id and `what`), so its text does not depend on which
    items share its batch or shard."""
    try:
        # A long prompt or a long history is cut to fit (rlaif/truncation.py) rather than failing the batch.
        completions = generator.generate(
            conversations,
            n=1,
            sampling=cfg.sampling,
            seed=[derive_seed(seed, item.id, what) for item in batch],
            progress=False,
            fit_context=True,
        )
    except ValueError as exc:
        match = re.match(r"conversation (\d+)", str(exc))
        if match and int(match.group(1)) < len(batch):
            item = batch[int(match.group(1))]
            raise ValueError(f"prompt item {item.id!r} ({what}): {exc}") from exc
        raise
    return [choices[0] for choices in completions]


def assemble_record(
    item: PromptItem, initial: str, rounds: Sequence[CritiqueRound], round_flags: Sequence[Sequence[str]]
) -> CritiqueRecord:
    """The record of one trajectory: per-round flags, the final revision (the last one without a blocking flag) and
    whether it is kept for SFT (there is such a revision and it differs from the first answer)."""
    flags = [f"round{r}:{flag}" for r, found in enumerate(round_flags, start=1) for flag in found]
    valid = [rnd.revision for rnd, found in zip(rounds, round_flags, strict=True) if not BLOCKING & set(found)]
    final = valid[-1] if valid else rounds[-1].revision
    kept = bool(valid)
    if not valid:
        flags.append("no-valid-revision")
    elif normalise(final) == normalise(initial):
        flags.append("unchanged-from-initial")
        kept = False
    return CritiqueRecord(
        id=item.id,
        prompt=item.prompt,
        initial_response=initial,
        rounds=list(rounds),
        final_revision=final,
        kept=kept,
        flags=flags,
    )


def _run_batch(
    batch: Sequence[PromptItem],
    selected: Sequence[Principle],
    shots: Conversation,
    cfg: CritiqueConfig,
    generator: Generator,
    seed: int,
) -> list[CritiqueRecord]:
    trajectories = [
        _Trajectory(
            item, principles_for(item.id, selected, cfg.rounds, seed), [{"role": "user", "content": item.prompt}]
        )
        for item in batch
    ]
    answers = _generate(generator, [t.history for t in trajectories], batch, cfg, seed, "answer")
    initial = [c.text.strip() for c in answers]
    round_flags: list[list[list[str]]] = [[] for _ in batch]
    cut = [["answer:" + TRUNCATED] if c.prompt_truncated else [] for c in answers]
    shot_ngrams = example_ngrams(shots, cfg.few_shot_copy_words)
    for trajectory, answer in zip(trajectories, initial, strict=True):
        trajectory.history.append({"role": "assistant", "content": answer})
    rounds: list[list[CritiqueRound]] = [[] for _ in batch]
    previous = list(initial)
    for r in range(cfg.rounds):
        for t in trajectories:
            t.history.append({"role": "user", "content": t.principles[r].critique})
        critique_completions = _generate(
            generator,
            [shots + t.history for t in trajectories],
            batch,
            cfg,
            seed,
            f"critique {r + 1}",
        )
        critiques = [c.text.strip() for c in critique_completions]
        for t, critique in zip(trajectories, critiques, strict=True):
            t.history.extend(
                [{"role": "assistant", "content": critique}, {"role": "user", "content": t.principles[r].revision}]
            )
        raw = _generate(
            generator,
            [shots + t.history for t in trajectories],
            batch,
            cfg,
            seed,
            f"revision {r + 1}",
        )
        for i, (t, critique, completion) in enumerate(zip(trajectories, critiques, raw, strict=True)):
            if critique_completions[i].prompt_truncated or completion.prompt_truncated:
                cut[i].append(f"round{r + 1}:{TRUNCATED}")
            revision, stripped = clean_revision(completion.text)
            found = check_revision(revision, previous[i], critique, completion.finished) + (
                ["stripped-meta"] if stripped else []
            )
            own = f"{t.item.prompt}\n{initial[i]}"
            if copies_example([critique, revision], shot_ngrams, own, cfg.few_shot_copy_words):
                found.append("few-shot-copy")
            t.history.append({"role": "assistant", "content": revision})
            rounds[i].append(CritiqueRound(principle_id=t.principles[r].id, critique=critique, revision=revision))
            round_flags[i].append(found)
            if not BLOCKING & set(found):
                previous[i] = revision
    records = [assemble_record(t.item, initial[i], rounds[i], round_flags[i]) for i, t in enumerate(trajectories)]
    for record, flags in zip(records, cut, strict=True):
        record.flags.extend(flags)
    return records


def critique_revise(
    items: Iterable[PromptItem],
    constitution: Constitution,
    principles: Sequence[str] | None,
    cfg: CritiqueConfig,
    generator: Generator,
    seed: int,
    *,
    progress: bool = True,
) -> Iterator[CritiqueRecord]:
    """CritiqueRecords in input order, yielded batch by batch (`cfg.batch_size` prompts per generate call).

    `principles` are ids or tag:<tag> selectors (None = all); an unknown one raises ValueError naming it.
    """
    items = list(items)
    validate_items(items)
    selected = constitution.select(principles)
    shots = few_shot_messages(constitution, constitution.critique_examples[: cfg.few_shot])
    if cfg.few_shot > len(constitution.critique_examples):
        log.warning(
            "critique.few_shot=%d but constitution %r has only %d critique examples",
            cfg.few_shot,
            constitution.name,
            len(constitution.critique_examples),
        )
    with tqdm(total=len(items), desc="critique-revise", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(items), cfg.batch_size):
            batch = items[start : start + cfg.batch_size]
            harmful = [item for item in batch if item.kind == "harmful"]
            helpful = [item for item in batch if item.kind == "helpful"]
            records = _run_batch(harmful, selected, shots, cfg, generator, seed) if harmful else []
            if helpful:
                records += _answer_helpful(helpful, cfg, generator, seed)
            by_id = {record.id: record for record in records}
            yield from (by_id[item.id] for item in batch)
            bar.update(len(batch))


def _answer_helpful(
    batch: Sequence[PromptItem], cfg: CritiqueConfig, generator: Generator, seed: int
) -> list[CritiqueRecord]:
    """Helpful prompts get a plain answer, no critique: there is nothing harmful to revise, and critiquing them
    under a harm principle only teaches refusals (Bai et al. 2022 sec. 3.1 mix plain helpful answers into SFT)."""
    conversations: list[Conversation] = [[{"role": "user", "content": item.prompt}] for item in batch]
    answers = _generate(generator, conversations, batch, cfg, seed, "helpful answer")
    records = []
    for item, answer in zip(batch, answers, strict=True):
        text = answer.text.strip()
        flags = ["helpful-answer"] + (["answer:" + TRUNCATED] if answer.prompt_truncated else [])
        if not text:
            flags.append("answer:empty")
        records.append(
            CritiqueRecord(
                id=item.id,
                prompt=item.prompt,
                kind="helpful",
                initial_response=text,
                rounds=[],
                final_revision=text,
                kept=bool(text),
                flags=flags,
            )
        )
    return records


def judge_filter(
    cfg: RunConfig,
    records: Sequence[CritiqueRecord],
    constitution: Constitution,
    stage_dir: Path | None = None,
    *,
    judge: tuple[PreTrainedModel | OptionScorer, PreTrainedTokenizerBase] | None = None,
) -> list[CritiqueRecord]:
    """The records after the run's judge filter (rlaif/judging/revision_filter.py) when it has one
    (`cfg.judge_filters_revisions`), else as they are. The judge is `judge` (a worker's loaded (model, tokenizer))
    or cfg.judge_model loaded here; an endpoint judge caches its responses and records its usage in `stage_dir`, so
    its requests and tokens join the stage result as judge_*. Nothing is loaded when no record needs judging."""
    if not cfg.judge_filters_revisions or not any(needs_judging(r) for r in records):
        return list(records)
    model, tokenizer = (
        judge if judge is not None else cached_judge(cfg.judge_model, cfg.judge.dtype, stage_dir=stage_dir)
    )
    generator = None
    if cfg.judge.chain_of_thought:
        generator = judge_generator(model, tokenizer, cfg.judge_model, cfg.generation.batch_size)
    return filter_revisions(records, model, tokenizer, constitution, cfg.judge, cfg.seed, generator=generator)


# The flags that take a record out of the SFT data, each the reason it is not there.
DROPPING = ("no-valid-revision", "unchanged-from-initial", "answer:empty", PREFERS_INITIAL, SPLIT_ORDERS)
_PER_STEP = re.compile(r"^(?:round\d+|answer):")  # "round2:meta", "answer:empty": counted by what they found


def drop_reason(record: CritiqueRecord) -> str:
    """Why a record that is not kept is not in the SFT data: the last flag that dropped it."""
    return next((flag for flag in reversed(record.flags) if flag in DROPPING), "unknown")


def to_sft_examples(records: Iterable[CritiqueRecord]) -> list[SFTExample]:
    """(prompt, final revision) of every kept record; helpful prompts' plain answers as kind "helpful"."""
    return [SFTExample(id=r.id, prompt=r.prompt, response=r.final_revision, kind=r.kind) for r in records if r.kept]


def stage_result(records: Sequence[CritiqueRecord], n_sft: int, usage: dict[str, dict] | None = None) -> StageResult:
    """The stage's counts, metrics and extras; `usage` is the endpoint usage read from the stage folder (a
    feedback.model endpoint: its requests and tokens join the counts as feedback_*)."""
    flag_counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for record in records:
        for flag in record.flags:
            # A step's findings by what they found ("meta"); the judge filter's whole ("judge:split-orders").
            kind = _PER_STEP.sub("", flag)
            flag_counts[kind] = flag_counts.get(kind, 0) + 1
        if not record.kept:
            reason = drop_reason(record)
            dropped[reason] = dropped.get(reason, 0) + 1
    long_items = LongItems.of([r.id for r in records if any(f.endswith(TRUNCATED) for f in r.flags)])
    judged = [r for r in records if r.revision_judgement is not None]
    judge_counts: dict[str, int] = {}
    metrics = {"critique/kept_fraction": n_sft / len(records)} if records else {}
    if judged:
        judge_counts = {"judged": len(judged), "judge_dropped": sum(not r.kept for r in judged)}
        metrics["critique/judge_kept_fraction"] = sum(r.kept for r in judged) / len(judged)
    return StageResult(
        stage=STAGE,
        outputs=[f"{STAGE}/{CRITIQUE_RECORDS_FILE}", f"{STAGE}/{SFT_DATA_FILE}"],
        counts={
            "prompts": len(records),
            "kept": n_sft,
            "dropped": len(records) - n_sft,
            "helpful_answers": sum(r.kind == "helpful" and r.kept for r in records),
            "truncated": long_items.truncated,
            **judge_counts,
            **usage_counts(usage or {}),
        },
        metrics=metrics,
        extra={
            "flags": flag_counts,
            "dropped": dropped,
            "long_items": long_items.model_dump(),
            **({"usage": usage} if usage else {}),
        },
    )


# --- the stage contract (rlaif/stages/contract.py) ---------------------------------------------------------------

RECORD = CritiqueRecord


def read_items(ctx: StageContext, start: int = 0, stop: int | None = None) -> list[PromptItem]:
    """The run's training prompts (`start` to `stop`)."""
    source = ctx.path("prompts", PROMPTS_FILE)
    items = read_jsonl(source, PromptItem, start, stop)
    if not items and start == 0:
        raise StoreError(f"run {ctx.run_id}: {source} has no prompts")
    return items


def process(
    ctx: StageContext, items: Sequence[PromptItem], generator: Generator | None = None
) -> Iterator[CritiqueRecord]:
    """Critique-revise the harmful prompts and answer the helpful ones with the run's feedback model."""
    if not items:
        return
    if ctx.constitution is None:
        raise StoreError(
            f"run {ctx.run_id}: the critique stage needs the run's constitution (inputs/constitution.json)"
        )
    cfg = ctx.cfg
    if generator is None:
        choice = backend_choice(ctx)
        log.info("stage %s: generation backend %s", ctx.name, choice.reason)
        generator = cached_generator(cfg.feedback_model, choice.applied_to(cfg.generation), stage_dir=ctx.out_dir)
    log.info("critique-revise: %d prompts, %d rounds, model %s", len(items), cfg.critique.rounds, generator.model_name)
    records = critique_revise(
        items, ctx.constitution, cfg.critique.principles, cfg.critique, generator, cfg.seed, progress=False
    )
    # Batch by batch through the judge filter (a revision kept only when the judge prefers it in both orders).
    batch: list[CritiqueRecord] = []
    for record in records:
        batch.append(record)
        if len(batch) == cfg.critique.batch_size:
            yield from judge_filter(cfg, batch, ctx.constitution, ctx.out_dir)
            batch = []
    yield from judge_filter(cfg, batch, ctx.constitution, ctx.out_dir)


def write(ctx: StageContext, records: Sequence[CritiqueRecord]) -> StageResult:
    """records.jsonl, the kept records as sft.jsonl, then the manifest."""
    out_dir = ctx.out_dir
    sft = to_sft_examples(records)
    write_jsonl(out_dir / CRITIQUE_RECORDS_FILE, records)
    write_jsonl(out_dir / SFT_DATA_FILE, sft)
    result = stage_result(records, len(sft), read_usage(out_dir))
    result.extra.update(backend_choice(ctx).as_extra())
    write_manifest(out_dir, extra={"stage": ctx.name, "counts": result.counts, "metrics": result.metrics})
    log.info("kept %d of %d revisions for SFT (%s)", len(sft), len(records), result.extra["flags"])
    return result


def finished(ctx: StageContext) -> StageResult:
    records = read_jsonl(ctx.out_dir / CRITIQUE_RECORDS_FILE, CritiqueRecord)
    result = stage_result(records, sum(r.kept for r in records), read_usage(ctx.out_dir))
    result.extra.update(backend_choice(ctx).as_extra())
    return result


def backend_choice(ctx: StageContext) -> BackendChoice:
    """The feedback model's engine by the rule of rlaif/generation/backend_choice.py, for the whole stage's
    estimated tokens, whichever shard asks: a harmful prompt is an answer and a critique and a revision per round,
    a helpful one an answer, each up to max_new_tokens."""
    cfg = ctx.cfg
    calls = sum(1 + 2 * cfg.critique.rounds if item.kind == "harmful" else 1 for item in read_items(ctx))
    tokens = calls * cfg.critique.sampling.max_new_tokens
    return generation_backend(cfg.feedback_model, cfg.generation.backend, tokens, cfg.generation.vllm_break_even_tokens)


def run_critique_revise(ctx: StageContext, generator: Generator | None = None) -> StageResult:
    """Critique and revise `<run>/inputs/prompts.jsonl` into `<run>/critique/records.jsonl` and `sft.jsonl`.

    The manifest is written last; a stage folder that has one is verified and returned without generating again,
    and an interrupted run resumes with the prompts it had not finished.
    """
    return run_sharded(sys.modules[__name__], ctx, generator=generator)  # type: ignore[arg-type]
