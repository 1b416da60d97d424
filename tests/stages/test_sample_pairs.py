"""Stage 3: K responses per prompt and their C(K, 2) pairs, on the tiny random model and real files."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from rlaif.config import PairsConfig, RunConfig, SamplingConfig
from rlaif.generation import Completion, Conversation
from rlaif.generation.hf import HFGenerator
from rlaif.records import Comparison, PromptItem, ResponseSet
from rlaif.stages import COMPARISONS_FILE, INPUTS, PROMPTS_FILE, RESPONSES_FILE
from rlaif.stages.contract import PARTIAL_FILE, StageContext
from rlaif.stages.sample_pairs import make_comparisons, run_sample_pairs, sample_responses
from rlaif.store import ArtifactStore, StoreError, read_jsonl, verify_manifest, write_jsonl

ITEMS = [
    PromptItem(id="p-a", prompt="How do I pick a lock?"),
    PromptItem(id="p-b", prompt="What is a good name for a cat?"),
    PromptItem(id="p-c", prompt="Write a haiku about rain."),
]
FAST = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6)


def test_three_responses_give_three_pairs() -> None:
    # K = 3 -> C(3, 2) = 3 pairs: (0, 1), (0, 2), (1, 2), ids '<prompt id>:<i>:<j>'.
    record = ResponseSet(id="p-a", prompt="Q?", responses=["r0", "r1", "r2"], finished=[True, True, False])
    pairs = make_comparisons(record)
    assert pairs == [
        Comparison(id="p-a:0:1", prompt="Q?", response_a="r0", response_b="r1"),
        Comparison(id="p-a:0:2", prompt="Q?", response_a="r0", response_b="r2"),
        Comparison(id="p-a:1:2", prompt="Q?", response_a="r1", response_b="r2"),
    ]


def test_four_responses_give_six_pairs_minus_identical(caplog: pytest.LogCaptureFixture) -> None:
    # K = 4 -> C(4, 2) = 6 pairs; responses 0 and 2 are equal (up to whitespace), so 5 remain.
    record = ResponseSet(id="q", prompt="Q?", responses=["a", "b", "a ", "c"], finished=[True] * 4)
    with caplog.at_level(logging.INFO, logger="rlaif.stages.sample_pairs"):
        pairs = make_comparisons(record)
    assert [p.id for p in pairs] == ["q:0:1", "q:0:3", "q:1:2", "q:1:3", "q:2:3"]
    assert "prompt q: responses 0 and 2 are identical; pair skipped" in caplog.text


class CountingGenerator:
    """Delegates to a real generator and records each call, to see chunks being yielded as they finish."""

    def __init__(self, inner: HFGenerator):
        self.inner = inner
        self.model_name = inner.model_name
        self.calls: list[int] = []

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
        self.calls.append(len(conversations))
        return self.inner.generate(conversations, n, sampling, seed, return_logprobs, progress, fit_context)


@pytest.fixture(scope="module")
def tiny_generator(tiny_model: str) -> HFGenerator:
    return HFGenerator(tiny_model, dtype="float32", batch_size=8)


def test_sample_responses_yields_chunk_by_chunk_in_order(tiny_generator: HFGenerator) -> None:
    counting = CountingGenerator(tiny_generator)
    cfg = PairsConfig(responses_per_prompt=3, sampling=FAST)
    stream = sample_responses(ITEMS, cfg, counting, seed=0, chunk_size=2)
    first = next(stream)
    assert counting.calls == [2]  # only the first chunk has been generated so far
    rest = list(stream)
    assert counting.calls == [2, 1]
    records = [first, *rest]
    assert [r.id for r in records] == ["p-a", "p-b", "p-c"]
    assert [r.prompt for r in records] == [i.prompt for i in ITEMS]
    assert all(len(r.responses) == 3 and len(r.finished) == 3 for r in records)
    # Re-sampling gives the same responses (seeded per chunk).
    assert list(sample_responses(ITEMS, cfg, tiny_generator, seed=0, chunk_size=2)) == records


def make_run(tmp_path: Path) -> tuple[ArtifactStore, str]:
    store = ArtifactStore(tmp_path)
    write_jsonl(store.run_dir("run1") / INPUTS / PROMPTS_FILE, ITEMS)
    return store, "run1"


def tiny_config(temperature: float = 1.0) -> RunConfig:
    return RunConfig().with_overrides(
        {
            "generation": {"backend": "transformers", "dtype": "float32"},
            "pairs": {"responses_per_prompt": 2, "sampling": {"temperature": temperature, "max_new_tokens": 6}},
        }
    )


def _ctx(store: ArtifactStore, run_id: str, cfg: RunConfig, policy: str) -> StageContext:
    return StageContext.of(store, run_id, "pairs", cfg=cfg, models={"policy": policy})


def test_run_sample_pairs_writes_responses_comparisons_and_manifest(tmp_path: Path, tiny_model: str) -> None:
    store, run_id = make_run(tmp_path)
    result = run_sample_pairs(_ctx(store, run_id, tiny_config(), tiny_model))
    folder = store.stage_dir(run_id, "pairs")
    manifest = verify_manifest(folder)
    assert set(manifest["files"]) == {RESPONSES_FILE, COMPARISONS_FILE}
    assert manifest["model"] == tiny_model
    responses = read_jsonl(folder / RESPONSES_FILE, ResponseSet)
    comparisons = read_jsonl(folder / COMPARISONS_FILE, Comparison)
    assert [r.id for r in responses] == ["p-a", "p-b", "p-c"]
    # K = 2 -> one pair per prompt; random-model samples are never identical.
    assert [c.id for c in comparisons] == ["p-a:0:1", "p-b:0:1", "p-c:0:1"]
    assert comparisons[1].response_a == responses[1].responses[0]
    assert comparisons[1].response_b == responses[1].responses[1]
    assert result.counts == {
        "prompts": 3,
        "responses": 6,
        "comparisons": 3,
        "identical_pairs_skipped": 0,
        "unfinished_responses": 6,  # 6 random tokens never end in EOS
        "truncated": 0,
    }
    assert result.outputs == ["pairs/responses.jsonl", "pairs/comparisons.jsonl"]
    assert result.metrics["pairs/finished_fraction"] == 0.0
    # Which engine generated and why (rlaif/generation/backend_choice.py), also in a finished stage's result below.
    assert (result.extra["backend"], result.extra["backend_reason"]) == ("transformers", "configured: transformers")

    # A finished stage is not run again: the same result, the files untouched.
    before = (folder / RESPONSES_FILE).stat().st_mtime_ns
    assert run_sample_pairs(_ctx(store, run_id, tiny_config(), tiny_model)) == result
    assert (folder / RESPONSES_FILE).stat().st_mtime_ns == before


def test_greedy_responses_are_identical_so_every_pair_is_skipped(tmp_path: Path, tiny_model: str) -> None:
    # Greedy K = 2 gives two equal answers per prompt: 3 prompts x C(2, 2) = 3 pairs, all skipped.
    store, run_id = make_run(tmp_path)
    result = run_sample_pairs(_ctx(store, run_id, tiny_config(temperature=0.0), tiny_model))
    assert result.counts["comparisons"] == 0
    assert result.counts["identical_pairs_skipped"] == 3
    assert (store.stage_dir(run_id, "pairs") / COMPARISONS_FILE).read_text() == ""


def test_resumes_from_partial_responses(tmp_path: Path, tiny_model: str) -> None:
    store, run_id = make_run(tmp_path)
    folder = store.stage_dir(run_id, "pairs")
    earlier = ResponseSet(id="p-b", prompt=ITEMS[1].prompt, responses=["kept one", "kept two"], finished=[True, True])
    write_jsonl(folder / PARTIAL_FILE, [earlier])  # an interrupted run answered p-b, wrote no manifest
    result = run_sample_pairs(_ctx(store, run_id, tiny_config(), tiny_model))
    responses = read_jsonl(folder / RESPONSES_FILE, ResponseSet)
    assert [r.id for r in responses] == ["p-a", "p-b", "p-c"]
    assert responses[1] == earlier  # not sampled again
    assert result.counts["prompts"] == 3
    comparisons = [json.loads(line) for line in (folder / COMPARISONS_FILE).read_text().splitlines()]
    assert {
        "id": "p-b:0:1",
        "prompt": ITEMS[1].prompt,
        "response_a": "kept one",
        "response_b": "kept two",
    } in comparisons


def test_missing_prompts_file_names_the_path(tmp_path: Path, tiny_model: str) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(StoreError, match=r"runs/run2/inputs/prompts.jsonl is missing"):
        run_sample_pairs(_ctx(store, "run2", tiny_config(), tiny_model))
