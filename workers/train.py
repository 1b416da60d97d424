"""Tasks of the `train` queue: SFT, reward model and PPO, each under a lease and resumable from step checkpoints."""

from __future__ import annotations

from celery import Task

from rlaif import runs
from workers.policy import runtime, send, stage_task


@stage_task("train.sft")
def sft(task: Task, run_id: str, stage: str) -> None:
    """Stage 2: supervised fine-tuning on the final revisions."""
    send(runs.run_training(runtime(), run_id, stage, runs.worker_identity(task.request.id)))


@stage_task("train.reward_model")
def reward_model(task: Task, run_id: str, stage: str) -> None:
    """Stage 5: Bradley-Terry reward model on the soft labels."""
    send(runs.run_training(runtime(), run_id, stage, runs.worker_identity(task.request.id)))


@stage_task("train.ppo")
def ppo(task: Task, run_id: str, stage: str) -> None:
    """Stage 6: PPO against the reward model with a KL penalty to the reference."""
    send(runs.run_training(runtime(), run_id, stage, runs.worker_identity(task.request.id)))
