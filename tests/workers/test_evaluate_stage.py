"""Stage 7 in the service: the plan ends with it, the state machine dispatches it as one task on the generate
queue (and re-enqueues it when its worker dies), and its figures go into the final policy's meta.json and card
with a manifest that still verifies. No models here: the whole run through evaluate is tests/test_end_to_end.py.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from service_fixtures import claim_stage, make_run
from sqlalchemy import select, update

from rlaif.checkpoints import CARD_FILE, META_FILE, model_card
from rlaif.config import RunConfig
from rlaif.evaluation.report import EvalReport, KLEstimate, WinRateEntry
from rlaif.evaluation.stats import win_rate
from rlaif.pipeline import plan
from rlaif.service import execute, state
from rlaif.service.db import StageRunRow, utcnow
from rlaif.stages.evaluate import add_evaluation_to_checkpoint
from rlaif.store import atomic_write_json, atomic_write_text, read_manifest, verify_manifest, write_manifest


def test_the_plan_ends_with_one_evaluate_stage_on_the_generate_queue() -> None:
    for iterations in (1, 3):
        stages = plan(RunConfig(iterations=iterations))
        last = stages[-1]
        assert (last.name, last.kind, last.iteration, last.task, last.queue) == (
            "evaluate",
            "evaluate",
            iterations,  # it evaluates the models of the last iteration
            "generate.evaluate",
            "generate",
        )
        assert stages[-2].kind == "ppo" and not last.sharded
        assert sum(s.kind == "evaluate" for s in stages) == 1


def test_evaluate_is_dispatched_after_the_last_ppo_and_swept_like_a_training_stage(rt: state.Runtime) -> None:
    run_id = make_run(rt)
    with rt.sessions.begin() as session:  # stages 1-6 done (marked by hand: nothing is trained here)
        session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.kind != "evaluate")
            .values(status="succeeded")
        )
    assert execute.advance(rt, run_id) == [state.Dispatch("generate.evaluate", (run_id, "evaluate"))]
    assert execute.advance(rt, run_id) == []  # started once
    assert claim_stage(rt, run_id, "evaluate", "evaluator")
    with rt.sessions.begin() as session:  # its worker died: the heartbeat goes stale
        session.execute(
            update(StageRunRow)
            .where(StageRunRow.run_id == run_id, StageRunRow.name == "evaluate")
            .values(heartbeat_at=utcnow() - timedelta(seconds=rt.lease_ttl_s + 1))
        )
    assert state.sweep(rt) == [state.Dispatch("generate.evaluate", (run_id, "evaluate"))]
    with rt.sessions() as session:
        row = session.scalars(
            select(StageRunRow).where(StageRunRow.run_id == run_id, StageRunRow.name == "evaluate")
        ).one()
    assert (row.status, row.iteration, row.task) == ("running", 1, "generate.evaluate")


def _checkpoint(folder: Path) -> dict:
    """A finished checkpoint folder as save_hf_checkpoint leaves it: weights, meta.json, README.md, manifest last."""
    meta = {"stage": "ppo", "base_model": "sft/model", "counts": {"prompts_in": 6}, "metrics": {"objective/kl": 0.25}}
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    atomic_write_json(folder / META_FILE, meta)
    atomic_write_text(folder / CARD_FILE, model_card(meta))
    return write_manifest(folder, {"stage": "ppo"})


def _report() -> EvalReport:
    # 3 prompts: the aligned answer wins twice and loses once -> win rate 2/3.
    stats = win_rate([0.9, 0.8, 0.2], tie_margin=0.0, flips=[False, False, True], resamples=50, seed=0)
    return EvalReport(
        run_id="run-x",
        created_at="2025-01-01T00:00:00+00:00",
        models={"base": "base", "aligned": "ppo/model"},
        judge_model="judge",
        prompts={"heldout": 3},
        win_rates=[WinRateEntry(dataset="all", axis="harmless", model="aligned", baseline="base", stats=stats)],
    )


def test_the_policy_card_gets_the_evaluation_and_its_manifest_still_verifies(tmp_path: Path) -> None:
    folder = tmp_path / "ppo" / "model"
    before = _checkpoint(folder)
    report = _report()
    metrics = {"eval/harmless_win_rate_vs_base": 2 / 3, "eval/alerts": 0.0}
    add_evaluation_to_checkpoint(folder, report, metrics, "evaluate")

    manifest = verify_manifest(folder)  # rewritten last, over the new card and meta
    assert manifest["stage"] == "ppo"  # the manifest's own fields are kept
    assert manifest["files"]["model.safetensors"] == before["files"]["model.safetensors"]
    assert manifest["files"][CARD_FILE] != before["files"][CARD_FILE]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["metrics"] == {"objective/kl": 0.25, **metrics}  # the stage's metrics stay, eval/* are added
    assert meta["evaluation"] == {
        "report": "evaluate/report.json",
        "judge_model": "judge",
        "prompts": {"heldout": 3},
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    card = (folder / CARD_FILE).read_text()
    assert card.startswith(model_card(meta))  # the lineage card, now with the eval/* metrics in its table
    assert "| eval/harmless_win_rate_vs_base | 0.666667 |" in card
    assert "## Evaluation" in card and "| Harmlessness win rate vs base | 0.67 [" in card

    # A redelivered evaluate task rewrites the same bytes.
    add_evaluation_to_checkpoint(folder, report, metrics, "evaluate")
    assert read_manifest(folder) == manifest and (folder / CARD_FILE).read_text() == card
    assert "KL to SFT" not in card  # (this report measured none)


def test_the_policy_card_shows_the_sampled_kl_to_sft(tmp_path: Path) -> None:
    folder = tmp_path / "ppo" / "model"
    _checkpoint(folder)
    kl = KLEstimate(mean=0.1234, se=0.0456, prompts=8, samples_per_prompt=2, max_new_tokens=16)
    add_evaluation_to_checkpoint(folder, _report().model_copy(update={"kl_to_sft": kl}), {}, "evaluate")
    verify_manifest(folder)
    card = (folder / CARD_FILE).read_text()
    assert "| KL to SFT (held-out, sampled) | 0.123 ± 0.046 nats (n=8) |" in card.split("## Evaluation", 1)[1]
