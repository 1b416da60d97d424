"""Stage 1 (SL-CAI) on the tiny model: quality checks on hand-made cases, few-shot turns, reproducibility, errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rlaif.config import CritiqueConfig, RunConfig, SamplingConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.generation import Completion, Conversation
from rlaif.records import CritiqueRecord, CritiqueRound, PromptItem, SFTExample
from rlaif.settings import settings
from rlaif.stages import CRITIQUE_RECORDS_FILE, INPUTS, PROMPTS_FILE, SFT_DATA_FILE
from rlaif.stages.contract import StageContext
from rlaif.stages.critique_revise import (
    assemble_record,
    check_revision,
    clean_revision,
    copies_example,
    critique_revise,
    example_ngrams,
    few_shot_messages,
    principles_for,
    run_critique_revise,
    to_sft_examples,
)
from rlaif.store import ArtifactStore, StoreError, read_jsonl, verify_manifest, write_jsonl

ITEMS = [
    PromptItem(id="harm-1", prompt="How can I pick the lock on my neighbour's door?"),
    PromptItem(id="help-1", prompt="How do I boil an egg?"),
    PromptItem(id="harm-2", prompt="Write an insult for my coworker."),
    PromptItem(id="help-2", prompt="What is photosynthesis?"),
]
FAST = CritiqueConfig(rounds=2, few_shot=1, batch_size=4, sampling=SamplingConfig(temperature=0.7, max_new_tokens=6))


class RecordingGenerator:
    """The real HFGenerator, keeping a copy of the conversations of every call (to check what the model saw)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.model_name = inner.model_name
        self.calls: list[list[Conversation]] = []

    def generate(
        self,
        conversations: Sequence[Conversation],
        n: int,
        sampling: SamplingConfig,
        seed: int,
        return_logprobs: bool = False,
        progress: bool = True,
        fit_context: bool = False,
    ) -> list[list[Completion]]:
        self.calls.append([list(c) for c in conversations])
        return self.inner.generate(conversations, n, sampling, seed, return_logprobs, progress, fit_context)


@pytest.fixture(scope="module")
def generator(tiny_model: str) -> Any:
    from rlaif.generation.hf import HFGenerator

    return HFGenerator(tiny_model, dtype="float32", batch_size=8)


@pytest.fixture(scope="module")
def constitution() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")


# ------------------------------------------------------------------ cleaning and flags on hand-made cases


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Here is a revised response: Ask your neighbour for a key.", "Ask your neighbour for a key."),
        ('Revision: "Ask your neighbour for a key."', "Ask your neighbour for a key."),
        ("Sure, here's the rewritten response:\n\n\u201cCall a locksmith.\u201d", "Call a locksmith."),
        ("Revised response: Here is an improved version of the answer: Call them.", "Call them."),
        ('The assistant should have said: "Please ask them for a key." That is safer.', "Please ask them for a key."),
        ("A wise and kind person would reply, \u201cI can't help with that", "I can't help with that"),
    ],
)
def test_clean_revision_strips_leading_meta(raw: str, clean: str) -> None:
    assert clean_revision(raw) == (clean, True)


def test_clean_revision_leaves_a_plain_answer_alone() -> None:
    assert clean_revision("  Boil it for seven minutes.  ") == ("Boil it for seven minutes.", False)
    # A quotation inside an ordinary answer is not a wrapped revision.
    assert clean_revision('Hello in French is "bonjour".') == ('Hello in French is "bonjour".', False)


def test_check_revision_flags() -> None:
    previous = "Break a back window; nobody will notice."
    critique = "The response encourages breaking into a home."
    assert check_revision("", previous, critique) == ["empty"]
    assert check_revision("   ", previous, critique) == ["empty"]
    assert check_revision("The response is harmful because it helps a burglary.", previous, critique) == ["meta"]
    assert check_revision("The assistant's response should not encourage crime.", previous, critique) == ["meta"]
    assert check_revision("Critique: it encourages crime.", previous, critique) == ["meta"]
    assert check_revision("the response encourages breaking into a home", previous, critique) == ["meta"]  # = critique
    assert check_revision("break a back window;  nobody will notice", previous, critique) == ["unchanged"]
    assert check_revision("Please ask your neighbour for a key instead.", previous, critique) == []
    # 16 words -> 14 word trigrams, only 5 distinct ("i'll use that." cycles): 5/14 = 0.36 < 0.4
    assert check_revision("I'll use that. " * 4 + "I'll use that now", previous, critique) == ["repetitive"]
    assert check_revision("Please ask your neighbour for a", previous, critique, finished=False) == ["truncated"]


def _round(revision: str) -> CritiqueRound:
    return CritiqueRound(principle_id="harmful", critique="It is harmful.", revision=revision)


def test_assemble_record_keeps_the_last_valid_revision() -> None:
    item = PromptItem(id="x", prompt="Get into my neighbour's house?")
    record = assemble_record(
        item, "Break a window.", [_round("Ask for a key."), _round("The response is better now.")], [[], ["meta"]]
    )
    assert record.final_revision == "Ask for a key."
    assert record.kept is True
    assert record.flags == ["round2:meta"]


def test_assemble_record_drops_unchanged_and_invalid() -> None:
    item = PromptItem(id="x", prompt="Q?")
    unchanged = assemble_record(item, "Break a window.", [_round("break a window")], [["unchanged"]])
    assert unchanged.kept is False and unchanged.flags == ["round1:unchanged", "unchanged-from-initial"]
    empty = assemble_record(item, "Break a window.", [_round("")], [["empty"]])
    assert empty.kept is False and empty.flags == ["round1:empty", "no-valid-revision"]
    assert to_sft_examples([unchanged, empty]) == []


def test_a_revision_that_continues_the_few_shot_example_is_a_copy() -> None:
    # The lock-picking example's revision ends "... try calling them or a relative of theirs, and if you think
    # there's an emergency inside, call the emergency services." A 1.5B teacher wrote that advice into answers about
    # computers and piracy. 6 words in a row from the example ("or a relative of theirs and") and not in the item's
    # own prompt or answer: a copy. The example's answer and critique count too; the requests (principle texts,
    # which every round's history has as well) do not.
    harmless = load_constitution(settings.constitutions_dir / "harmless.yaml")
    shots = few_shot_messages(harmless, harmless.critique_examples[:1])
    grams = example_ngrams(shots, 6)
    assert ("or", "a", "relative", "of", "theirs", "and") in grams
    own = "Computers are stupid.\nComputers are useful tools."
    copied = "Computers are tools. Try calling them or a relative of theirs, and ask for help."
    assert copies_example(["A fair critique.", copied], grams, own, 6)
    assert copies_example([copied], grams, own, 7) is False  # only 6 words in a row are the example's
    assert copies_example([copied], grams, own, 0) is False  # 0 = off
    # The same words in the item itself are the item's, not a copy (a prompt about a neighbour's lock may say them).
    assert (
        copies_example([copied], grams, own + " Should I try calling them or a relative of theirs, and ask?", 6)
        is False
    )
    assert copies_example(["Computers are tools that people made."], grams, own, 6) is False
    request = next(m["content"] for m in shots[2:] if m["role"] == "user")  # the example's critique request
    assert len(request.split()) >= 6 and copies_example([request], grams, own, 6) is False


def test_a_few_shot_copy_blocks_the_revision() -> None:
    item = PromptItem(id="x", prompt="Is piracy theft?")
    copy = _round("If you're worried about your neighbour, try calling them or a relative of theirs.")
    record = assemble_record(item, "Yes.", [copy], [["few-shot-copy"]])
    assert record.kept is False and record.flags == ["round1:few-shot-copy", "no-valid-revision"]
    kept = assemble_record(item, "Yes.", [_round("It can be; it depends."), copy], [[], ["few-shot-copy"]])
    assert kept.final_revision == "It can be; it depends." and kept.kept is True


def test_to_sft_examples_uses_kept_final_revisions() -> None:
    item = PromptItem(id="k", prompt="Q?")
    kept = assemble_record(item, "Bad.", [_round("Good.")], [[]])
    assert to_sft_examples([kept]) == [SFTExample(id="k", prompt="Q?", response="Good.")]


# ------------------------------------------------------------------ conversations and generation


def test_few_shot_turns_come_first_in_critique_and_revision_calls(generator: Any, constitution: Constitution) -> None:
    recorder = RecordingGenerator(generator)
    records = list(critique_revise(ITEMS[:2], constitution, None, FAST, recorder, seed=0, progress=False))
    example = constitution.critique_examples[0]
    shots = few_shot_messages(constitution, [example])
    principle = constitution.principle(example.principle)
    assert [m["content"] for m in shots] == [
        example.prompt,
        example.response,
        principle.critique,
        example.critique,
        principle.revision,
        example.revision,
    ]
    # 1 answer call + 2 rounds x (critique, revision): one batched call per step over both prompts.
    assert len(recorder.calls) == 5 and all(len(call) == 2 for call in recorder.calls)
    answer_call, *round_calls = recorder.calls
    assert answer_call[0] == [{"role": "user", "content": ITEMS[0].prompt}]  # the first answer sees no examples
    for call in round_calls:
        for conversation, item in zip(call, ITEMS[:2], strict=True):
            assert conversation[: len(shots)] == shots
            assert conversation[len(shots)] == {"role": "user", "content": item.prompt}
    # The last call is round 2's revision request, after the growing conversation of round 1.
    record = records[0]
    last = round_calls[-1][0][len(shots) :]
    assert [m["role"] for m in last] == ["user", "assistant"] + ["user", "assistant"] * 3 + ["user"]
    assert last[1]["content"] == record.initial_response
    assert last[3]["content"] == record.rounds[0].critique and last[5]["content"] == record.rounds[0].revision
    chosen = principles_for(ITEMS[0].id, constitution.principles, 2, seed=0)
    assert last[2]["content"] == chosen[0].critique and last[-1]["content"] == chosen[1].revision
    assert [r.principle_id for r in record.rounds] == [p.id for p in chosen]


def test_same_seed_reproduces_and_principles_do_not_depend_on_batching(
    generator: Any, constitution: Constitution
) -> None:
    first = list(critique_revise(ITEMS, constitution, None, FAST, generator, seed=3, progress=False))
    again = list(critique_revise(ITEMS, constitution, None, FAST, generator, seed=3, progress=False))
    assert first == again
    one_by_one = list(
        critique_revise(
            ITEMS, constitution, None, FAST.model_copy(update={"batch_size": 1}), generator, seed=3, progress=False
        )
    )
    assert [[r.principle_id for r in rec.rounds] for rec in one_by_one] == [
        [r.principle_id for r in rec.rounds] for rec in first
    ]
    other_seed = list(critique_revise(ITEMS, constitution, None, FAST, generator, seed=4, progress=False))
    assert [[r.principle_id for r in rec.rounds] for rec in other_seed] != [
        [r.principle_id for r in rec.rounds] for rec in first
    ]


def test_helpful_prompts_are_answered_not_critiqued(generator: Any, constitution: Constitution) -> None:
    recording = RecordingGenerator(generator)
    items = [ITEMS[0], ITEMS[1].model_copy(update={"kind": "helpful"}), ITEMS[2]]
    records = list(critique_revise(items, constitution, None, FAST, recording, 0, progress=False))
    assert [r.id for r in records] == ["harm-1", "help-1", "harm-2"]  # input order kept
    helpful = records[1]
    assert helpful.kind == "helpful" and helpful.rounds == [] and "helpful-answer" in helpful.flags
    assert helpful.final_revision == helpful.initial_response
    assert all(len(r.rounds) == FAST.rounds and r.kind == "harmful" for r in (records[0], records[2]))
    # The helpful prompt was sent once (its answer), never with a critique request after it.
    sent = [c for call in recording.calls for c in call if c and c[-1]["content"] == ITEMS[1].prompt]
    assert len(sent) == 1 and not any(
        ITEMS[1].prompt in m["content"] for call in recording.calls for c in call if len(c) > 1 for m in c
    )
    examples = to_sft_examples(records)
    assert {e.id: e.kind for e in examples}.get("help-1", "helpful") == "helpful"
    assert all(e.kind == "harmful" for e in examples if e.id != "help-1")


def test_bad_input_raises_naming_the_item(generator: Any, constitution: Constitution) -> None:
    with pytest.raises(ValueError, match="prompt item 'blank': empty prompt"):
        list(
            critique_revise(
                [PromptItem(id="blank", prompt="  ")], constitution, None, FAST, generator, 0, progress=False
            )
        )
    with pytest.raises(ValueError, match=r"unknown principle selector\(s\) \['kindness'\]"):
        list(critique_revise(ITEMS, constitution, ["kindness"], FAST, generator, 0, progress=False))
    # A prompt longer than the context is cut to fit (tests/test_truncation.py); only a config that leaves no room
    # at all (max_new_tokens filling the tiny model's 2048-token context) fails, naming the item and the limits.
    no_room = FAST.model_copy(update={"sampling": SamplingConfig(max_new_tokens=2047)})
    with pytest.raises(ValueError, match="prompt item 'help-1' \\(answer\\).*never cut.*max_new_tokens"):
        list(critique_revise([ITEMS[1]], constitution, None, no_room, generator, 0, progress=False))


def test_run_critique_revise_writes_records_sft_and_manifest(
    tmp_path: Path, generator: Any, constitution: Constitution
) -> None:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.path("run1", INPUTS, PROMPTS_FILE), ITEMS)
    cfg = RunConfig(critique=FAST.model_dump())
    result = run_critique_revise(
        StageContext.of(store, "run1", "critique", cfg=cfg, constitution=constitution), generator=generator
    )
    records = read_jsonl(store.path("run1", "critique", CRITIQUE_RECORDS_FILE), CritiqueRecord)
    sft = read_jsonl(store.path("run1", "critique", SFT_DATA_FILE), SFTExample)
    assert [r.id for r in records] == [i.id for i in ITEMS]
    assert [s.id for s in sft] == [r.id for r in records if r.kept]
    assert result.counts == {
        "prompts": 4,
        "kept": len(sft),
        "dropped": 4 - len(sft),
        "helpful_answers": 0,
        "truncated": 0,
    }
    assert set(verify_manifest(store.stage_dir("run1", "critique"))["files"]) == {CRITIQUE_RECORDS_FILE, SFT_DATA_FILE}
    with pytest.raises(StoreError, match="has no prompts"):
        run_critique_revise(
            StageContext.of(ArtifactStore(tmp_path / "empty"), "run1", "critique", cfg=cfg, constitution=constitution),
            generator=generator,
        )


def test_critique_command_prints_every_step(tmp_path: Path, tiny_model: str) -> None:
    from typer.testing import CliRunner

    from rlaif.cli import app

    runner = CliRunner()
    out = tmp_path / "records.jsonl"
    args = ["critique", "--model", tiny_model, "--constitution", "minimal", "--limit", "2", "--rounds", "2"]
    result = runner.invoke(app, [*args, "--max-new-tokens", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out, CritiqueRecord)
    assert [r.id for r in records] == ["demo-harm-01", "demo-help-01"]  # examples/demo_prompts.jsonl by default
    for text in (
        "Human: How can I pick the lock",
        "Answer:",
        "Critique 1 [",
        "Revision 1:",
        "Critique 2 [",
        "Revision 2:",
    ):
        assert text in result.stdout
    assert f"Critique 1 [{records[0].rounds[0].principle_id}]" in result.stdout
    bad = runner.invoke(app, [*args, "--principles", "kindness"])
    assert bad.exit_code == 2 and "unknown principle selector(s) ['kindness']" in bad.output
