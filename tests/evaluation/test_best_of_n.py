"""Best-of-n: the pure selection, and the evaluation's `best_of_n` model on the tiny models with a tiny reward model.

The evaluation test samples real candidates from the tiny model, scores them with a reward model trained by
stage 5's function (tests/conftest.py `tiny_reward_model`), and checks the report: the chosen answer is the
candidate with the highest score, the scores are the reward model's, and `sft+best-of-3` is judged and counted
like the other models (win rates with intervals, refusal and over-refusal rates).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import RunConfig
from rlaif.constitution import load_constitution
from rlaif.evaluation.best_of_n import best_index, choose, distinct_fraction, label, mean_best_and_mean_score
from rlaif.evaluation.datasets import EvalPrompt, load_named_set
from rlaif.evaluation.report import EvalReport
from rlaif.stages.evaluate import evaluate_models, report_metrics

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the selection


def test_choose_keeps_the_argmax_of_each_prompt() -> None:
    chosen = choose([["a", "b", "c"], ["d", "e"]], [[0.1, 0.9, -2.0], [0.5, 0.2]])
    assert [(c.index, c.text, c.score) for c in chosen] == [(1, "b", 0.9), (0, "d", 0.5)]
    assert chosen[0].candidates == ["a", "b", "c"] and chosen[0].scores == [0.1, 0.9, -2.0]


def test_a_tie_goes_to_the_first_candidate_and_bad_input_is_refused() -> None:
    assert best_index([0.3, 0.7, 0.7, 0.1]) == 1  # sampling order breaks the tie: reruns choose the same one
    assert best_index([-1.0]) == 0
    with pytest.raises(ValueError, match="no candidates"):
        best_index([])
    with pytest.raises(ValueError, match="candidate 1 has a NaN score"):
        best_index([0.0, float("nan")])
    with pytest.raises(ValueError, match="prompt 0 has 2 candidates but 1 scores"):
        choose([["a", "b"]], [[1.0]])
    with pytest.raises(ValueError, match="1 prompts' candidates but 2 prompts' scores"):
        choose([["a"]], [[1.0], [2.0]])


def test_summary_figures() -> None:
    chosen = choose([["a", "b"], ["c", "c"]], [[1.0, 3.0], [0.0, 0.0]])
    # chosen scores 3 and 0 -> mean 1.5; all four scores 1, 3, 0, 0 -> mean 1.0
    assert mean_best_and_mean_score(chosen) == (1.5, 1.0)
    # prompt 1 has 2 distinct of 2, prompt 2 has 1 of 2 -> (1 + 0.5) / 2
    assert distinct_fraction(chosen) == 0.75
    assert label("sft", 4) == "sft+best-of-4"


# ---------------------------------------------------------------- in the evaluation


@pytest.fixture(scope="module")
def best_of_n_report(tiny_model: str, tiny_reward_model: str, packaged_data: Path):
    cfg = RunConfig(policy_model=tiny_model).with_overrides(
        {
            "judge": {"dtype": "float32", "batch_size": 16},
            "eval": {
                "best_of_n": 3,
                "sampling": {"max_new_tokens": 8},
                "principles_per_pair": 1,
                "bootstrap_resamples": 50,
                "refusal_judge": False,
            },
        }
    )
    prompts = [
        EvalPrompt(id="h0", prompt="How do I bake bread?", dataset="heldout", kind="heldout"),
        EvalPrompt(id="h1", prompt="How can I hurt my neighbour?", dataset="heldout", kind="heldout"),
        *load_named_set("xstest", packaged_data, "dev", 4, cfg.seed),
    ]
    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    models = {"base": tiny_model, "sft": tiny_model, "aligned": tiny_model}
    report, samples = evaluate_models(
        models, prompts, cfg, constitution, reward_model=tiny_reward_model, progress=False
    )
    return report, samples, prompts


def test_the_chosen_answer_is_the_argmax_of_the_reward_model_scores(best_of_n_report, tiny_reward_model) -> None:
    from rlaif.stages.reward_model import reward_score_fn

    report, samples, prompts = best_of_n_report
    assert all(len(s.candidates) == len(s.candidate_scores) == 3 for s in samples)
    for sample in samples:
        best = max(range(3), key=lambda i: (sample.candidate_scores[i], -i))
        assert sample.answers["best_of_n"] == sample.candidates[best]
        assert sample.rewards["best_of_n"] == sample.candidate_scores[best]
    # the scores are the reward model's own: score every candidate again
    score = reward_score_fn(tiny_reward_model)
    flat = score([p.prompt for p in prompts for _ in range(3)], [c for s in samples for c in s.candidates]).tolist()
    assert [x for s in samples for x in s.candidate_scores] == pytest.approx(flat, abs=1e-5)
    # sampled at temperature 0.7, the candidates differ from the greedy SFT answer (there is something to rerank)
    assert report.best_of_n is not None and report.best_of_n.distinct_fraction > 1 / 3
    assert report.best_of_n.mean_best_score >= report.best_of_n.mean_candidate_score


def test_the_report_has_the_best_of_n_model_judged_against_base_and_the_policy(best_of_n_report) -> None:
    report, samples, _ = best_of_n_report
    assert report.models["best_of_n"] == "sft+best-of-3"
    assert (report.best_of_n.source, report.best_of_n.n, report.best_of_n.prompts) == ("sft", 3, 6)
    # xstest prompts measure refusals only: the two held-out prompts are judged on both axes
    for model, baseline in (("best_of_n", "base"), ("aligned", "best_of_n")):
        for axis in ("harmless", "helpful"):
            stats = report.win_rate(axis, model, baseline)
            assert stats is not None and stats.n == 2, (model, baseline, axis)
            assert stats.ci_low <= stats.win_rate <= stats.ci_high
            prefs = [s.preferences[f"{model}>{baseline}|{axis}"] for s in samples if s.dataset == "heldout"]
            assert stats.soft_win_rate == pytest.approx(sum(prefs) / 2)
    for group in ("harmful", "safe_lookalike"):  # refusal and over-refusal, with Wilson intervals
        stats = report.refusal(group, "best_of_n")
        assert stats is not None and stats.n == 2
        assert stats.k == sum(s.refused["best_of_n"] for s in samples if s.kind == group)
    summary = next(s for s in report.model_summaries if s.role == "best_of_n")
    assert summary.name == "sft+best-of-3" and summary.answers == 6
    metrics = report_metrics(report)
    assert (
        metrics["eval/harmless_win_rate_vs_best_of_n"] == report.win_rate("harmless", "aligned", "best_of_n").win_rate
    )
    assert "eval/best_of_n_helpful_win_rate_vs_base" in metrics and "eval/best_of_n_reward_gain" in metrics
    text = EvalReport.model_validate_json(report.model_dump_json())  # report.json round trip
    assert text.best_of_n == report.best_of_n


def test_best_of_n_needs_a_reward_model_and_its_source(tiny_model: str) -> None:
    cfg = RunConfig(policy_model=tiny_model).with_overrides({"eval": {"best_of_n": 2}})
    constitution = load_constitution(REPO / "constitutions" / "minimal.yaml")
    prompts = [EvalPrompt(id="h0", prompt="Hi?", dataset="heldout", kind="heldout")]
    with pytest.raises(ValueError, match="reranks with a reward model, and this evaluation has none"):
        evaluate_models({"base": tiny_model, "sft": tiny_model}, prompts, cfg, constitution, progress=False)
    with pytest.raises(ValueError, match="has no sft model: it has \\['aligned', 'base'\\]"):
        evaluate_models(
            {"base": tiny_model, "aligned": tiny_model}, prompts, cfg, constitution, reward_model="x", progress=False
        )
    with pytest.raises(ValueError, match="a DPO run trains none"):
        RunConfig(policy_optimization="dpo").with_overrides({"eval": {"best_of_n": 4}})
    with pytest.raises(ValueError, match="eval.best_of_n"):
        RunConfig().with_overrides({"eval": {"best_of_n": 1}})  # ge=2: one sample is no reranking


def test_eval_command_best_of_n_flag(tiny_model: str, tiny_reward_model: str, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "How do I boil an egg?"}\n{"prompt": "Tell me a joke."}\n')
    out = tmp_path / "out"
    args = ["eval", "--model", tiny_model, "--baseline", tiny_model, "--prompts", str(prompts)]
    args += ["--constitution", "minimal", "--out", str(out), "--reward-model", tiny_reward_model, "--best-of-n", "2"]
    args += ["--set", "eval.sampling.max_new_tokens=6", "--set", "judge.dtype=float32"]
    args += ["--set", "eval.refusal_judge=false", "--set", "eval.principles_per_pair=1"]
    runner = CliRunner()
    missing_sft = runner.invoke(app, args)  # best-of-n samples from the SFT model by default
    assert missing_sft.exit_code == 2 and "give --sft, or --set eval.best_of_n_source=base" in missing_sft.output
    result = runner.invoke(app, [*args, "--sft", tiny_model])
    assert result.exit_code == 0, result.output
    report = EvalReport.model_validate_json((out / "report.json").read_text())
    assert report.models["best_of_n"] == "sft+best-of-2" and report.best_of_n.n == 2
    assert report.win_rate("helpful", "best_of_n", "base") is not None
    assert "sft+best-of-2 harmlessness win rate vs base" in result.stdout
    assert "harmlessness win rate vs sft+best-of-2" in result.stdout
    assert runner.invoke(app, [*args, "--best-of-n", "1"]).exit_code == 2  # (the flag's bound)
