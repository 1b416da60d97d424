"""`rlaif sft`, `rlaif reward-model`, `rlaif ppo`, `rlaif dpo` (train a stage of a run) and `rlaif reward-eval`.

The run's frozen config is <run>/inputs/config.json; a run without one (a stage run on its own) takes
--config/--set and stores the result there, so later stages see the same config. Each command also runs
data-parallel under torchrun:

    rlaif sft --run-id demo --set sft.epochs=2
    torchrun --nproc_per_node 2 -m rlaif reward-model --run-id demo
    rlaif reward-eval --model <run>/reward_model/model --pairs rlaif/data/preference_pairs.dev.jsonl
    rlaif ppo --run-id demo
    torchrun --nproc-per-node 2 -m rlaif ppo --run-id demo
    rlaif dpo --run-id demo --set policy_optimization=dpo
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from rlaif.config import RunConfig, load_run_config, stored_run_config
from rlaif.data import DATA_DIR

console = Console()
errors = Console(stderr=True)

RUN_ID = typer.Option(..., "--run-id", help="Run id: the folder <artifact root>/runs/<run id>.")
CONFIG = typer.Option(None, "--config", help="Run config YAML, for a run that has no stored config yet.")
OVERRIDES = typer.Option(None, "--set", help="key.path=value override, for a run that has no stored config yet.")
ROOT = typer.Option(None, "--root", help="Artifact root (default: RLAIF_ARTIFACT_ROOT or ~/.cache/rlaif/artifacts).")


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(2)


def _store(root: Path | None):
    from rlaif.settings import settings
    from rlaif.store import ArtifactStore

    return ArtifactStore(root or settings.artifacts_dir)


# A config built from --config/--set for a run without one; `_report` stores it once the stage has succeeded,
# so a stage that fails (missing inputs, bad model) does not freeze a config the user meant to change.
_unsaved_config: dict[Path, str] = {}


def _run_config(store: object, run_id: str, config: Path | None, overrides: list[str] | None) -> RunConfig:
    """The run's stored config; or, for a run without one, the given --config/--set (stored on success)."""
    from rlaif.stages import CONFIG_FILE, INPUTS

    path = store.path(run_id, INPUTS, CONFIG_FILE)
    if path.exists():
        if config is not None or overrides:
            raise _fail(f"{path} exists: a run's config is frozen, --config/--set only apply to a run without one")
        try:
            return stored_run_config(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise _fail(f"{path}: not a valid run config: {exc}") from None
    try:
        cfg = load_run_config(config, overrides)
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    _unsaved_config[path] = cfg.model_dump_json(indent=2)
    return cfg


def _context(store: object, run_id: str, stage: str, cfg: RunConfig, **models: str | None) -> object:
    """The stage's context in the run folder; a model given on the command line replaces the one its role would
    read from the run (`base`, `policy`, `reference`, `reward_model`)."""
    from rlaif.stages.contract import StageContext

    overrides = {role: model for role, model in models.items() if model is not None}
    return StageContext.of(store, run_id, stage, cfg=cfg, models=overrides)  # type: ignore[arg-type]


def _report(result: object) -> None:
    """Print the stage result (rank 0), store a config built for this run, leave the process group."""
    from rlaif.distributed import init_distributed, shutdown_distributed
    from rlaif.store import atomic_write_text

    if init_distributed().is_main:
        for path, text in _unsaved_config.items():
            atomic_write_text(path, text)
        print(result.model_dump_json(indent=2))
    _unsaved_config.clear()
    shutdown_distributed()


def sft_command(
    run_id: str = RUN_ID,
    base_model: str | None = typer.Option(
        None, "--base-model", help="Model to fine-tune (default: the run's policy_model)."
    ),
    config: Path | None = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    root: Path | None = ROOT,
) -> None:
    """Stage 2: fine-tune on <run>/critique/sft.jsonl, write <run>/sft/model."""
    from rlaif.modeling import ModelError
    from rlaif.stages.sft import run_sft
    from rlaif.store import StoreError

    store = _store(root)
    cfg = _run_config(store, run_id, config, overrides)
    try:
        result = run_sft(_context(store, run_id, "sft", cfg, base=base_model))
    except (FileNotFoundError, ModelError, StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _report(result)


def reward_model_command(
    run_id: str = RUN_ID,
    sft_model: str | None = typer.Option(None, "--sft-model", help="Backbone (default: <run>/sft/model)."),
    stage: str = typer.Option(
        "reward_model", "--stage", help="Stage to train (reward_model-2...: it reads that iteration's labels)."
    ),
    config: Path | None = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    root: Path | None = ROOT,
) -> None:
    """Stage 5: train the reward model on <run>/judge/labels.jsonl, write <run>/reward_model/model."""
    from rlaif.modeling import ModelError
    from rlaif.stages.reward_model import run_reward_model
    from rlaif.store import StoreError

    store = _store(root)
    cfg = _run_config(store, run_id, config, overrides)
    try:
        result = run_reward_model(_context(store, run_id, stage, cfg, base=sft_model))
    except (FileNotFoundError, ModelError, StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _report(result)


def dpo_command(
    run_id: str = RUN_ID,
    policy_model: str | None = typer.Option(None, "--policy-model", help="Policy to train (default: <run>/sft/model)."),
    reference_model: str | None = typer.Option(
        None, "--reference-model", help="Frozen reference (default: <run>/sft/model)."
    ),
    stage: str = typer.Option("dpo", "--stage", help="Stage to train (dpo-2...: it reads that iteration's labels)."),
    config: Path | None = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    root: Path | None = ROOT,
) -> None:
    """Stages 5-6 with policy_optimization=dpo: DPO on <run>/judge/labels.jsonl, write <run>/dpo/model."""
    from rlaif.modeling import ModelError
    from rlaif.stages.dpo import run_dpo
    from rlaif.store import StoreError

    store = _store(root)
    cfg = _run_config(store, run_id, config, overrides)
    try:
        # (the DPO stage of any run folder: its plan is the DPO one, whatever the stored config's method)
        cfg = cfg.model_copy(update={"policy_optimization": "dpo"})
        result = run_dpo(_context(store, run_id, stage, cfg, policy=policy_model, reference=reference_model))
    except (FileNotFoundError, ModelError, StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _report(result)


def reward_eval_command(
    model: Path = typer.Option(..., "--model", exists=True, file_okay=False, help="Reward model folder."),
    pairs: Path = typer.Option(
        DATA_DIR / "preference_pairs.dev.jsonl",
        "--pairs",
        exists=True,
        dir_okay=False,
        help="JSONL of prompt, chosen, rejected (default: the hh-rlhf pairs shipped in rlaif/data).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score only the first N pairs."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Sequences per forward pass."),
) -> None:
    """Accuracy and Bradley-Terry loss of a reward model on human preference pairs."""
    from rlaif.evaluation.datasets import load_human_pairs
    from rlaif.modeling import ModelError
    from rlaif.stages.reward_model import evaluate_reward_model
    from rlaif.store import StoreError

    try:
        report = evaluate_reward_model(model, load_human_pairs(pairs, limit), batch_size=batch_size)
    except (ModelError, StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    print(json.dumps(report, indent=2))


def ppo_command(
    run_id: str | None = typer.Option(None, "--run-id", help="Run id; leave out with --prompts to run PPO on its own."),
    policy_model: str | None = typer.Option(
        None, "--policy-model", help="Policy to train (default: <run>/sft/model; alone: the config's policy_model)."
    ),
    reward_model: str | None = typer.Option(
        None,
        "--reward-model",
        help="Reward model folder: scores, and the value model's start (default: <run>/reward_model/model).",
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", exists=True, dir_okay=False, help="On its own: JSONL of prompts (no run, no store)."
    ),
    scorer: str = typer.Option(
        "reward-model", "--scorer", help="On its own: 'reward-model' (needs --reward-model) or 'refusal' (rule-based)."
    ),
    out: Path | None = typer.Option(None, "--out", file_okay=False, help="On its own: output folder."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="On its own: use the first N prompts."),
    config: Path | None = CONFIG,
    overrides: list[str] | None = OVERRIDES,
    root: Path | None = ROOT,
) -> None:
    """Stage 6: PPO of the SFT model against the reward model, write <run>/ppo/model.

    On its own (for demos and tests): rlaif ppo --prompts red_team.jsonl --scorer refusal --out /tmp/ppo
    --policy-model smollm2-135m-instruct --set ppo.total_episodes=64
    Data-parallel: torchrun --nproc-per-node 2 -m rlaif ppo ... (the same arguments; ppo.batch_size is global).
    """
    from rlaif.distributed import init_distributed
    from rlaif.modeling import ModelError
    from rlaif.store import StoreError

    # Under torchrun: join the group (and pick this rank's GPU) before the reward model is loaded onto a device.
    init_distributed()
    try:
        if run_id is None:
            result = _ppo_alone(prompts, policy_model, reward_model, scorer, out, limit, config, overrides)
        else:
            from rlaif.stages.ppo import run_ppo

            store = _store(root)
            cfg = _run_config(store, run_id, config, overrides)
            result = run_ppo(_context(store, run_id, "ppo", cfg, policy=policy_model, reward_model=reward_model))
    except (FileNotFoundError, ModelError, StoreError, ValueError) as exc:
        raise _fail(str(exc)) from None
    _report(result)


def _ppo_alone(
    prompts: Path | None,
    policy_model: str | None,
    reward_model: str | None,
    scorer: str,
    out: Path | None,
    limit: int | None,
    config: Path | None,
    overrides: list[str] | None,
) -> object:
    """PPO without a run: prompts from a file, the refusal scorer or a reward model, results in --out."""
    from rlaif.checkpoints import checkpoint_meta
    from rlaif.prompts import load_prompts
    from rlaif.stages.ppo import train_ppo

    if prompts is None or out is None:
        raise _fail("without --run-id, give --prompts and --out")
    if scorer not in ("reward-model", "refusal"):
        raise _fail(f"--scorer {scorer!r}: use 'reward-model' or 'refusal'")
    if scorer == "reward-model" and reward_model is None:
        raise _fail("--scorer reward-model needs --reward-model (or use --scorer refusal)")
    cfg = load_run_config(config, overrides)
    if scorer == "refusal":
        from rlaif.scorers import refusal_scorer

        score_fn = refusal_scorer()
    else:
        from rlaif.stages.reward_model import reward_score_fn

        score_fn = reward_score_fn(reward_model)
    policy = policy_model or cfg.policy_model
    texts = [item.prompt for item in load_prompts(prompts, limit)]
    meta = checkpoint_meta("ppo", policy, cfg, scorer=scorer, prompts=str(prompts), reward_model=reward_model)
    return train_ppo(
        texts, policy, score_fn, cfg.ppo, out, cfg.seed, value_model=reward_model, meta=meta, monitor=cfg.eval.monitor
    )


def register(app: typer.Typer) -> None:
    """Add the training commands to the top-level app."""
    app.command("sft")(sft_command)
    app.command("reward-model")(reward_model_command)
    app.command("reward-eval")(reward_eval_command)
    app.command("ppo")(ppo_command)
    app.command("dpo")(dpo_command)
