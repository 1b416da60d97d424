"""Tasks of the `train` queue: SFT, reward model, PPO, DPO, online DPO and best-of-n, each under a lease, resumable
from step checkpoints."""

from __future__ import annotations

from celery import Task

from rlaif.service import execute
from rlaif.service.state import worker_identity
from workers.policy import runtime, send, stage_task


@stage_task("train.sft")
def sft(task: Task, run_id: str, stage: str) -> None:
    """Stage 2: supervised fine-tuning on the final revisions."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))


@stage_task("train.reward_model")
def reward_model(task: Task, run_id: str, stage: str) -> None:
    """Stage 5: Bradley-Terry reward model on the soft labels."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))


@stage_task("train.ppo")
def ppo(task: Task, run_id: str, stage: str) -> None:
    """Stage 6: PPO against the reward model with a KL penalty to the reference."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))


@stage_task("train.dpo")
def dpo(task: Task, run_id: str, stage: str) -> None:
    """Stages 5-6 with policy_optimization=dpo: DPO on the soft labels against the SFT reference."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))


@stage_task("train.online_dpo")
def online_dpo(task: Task, run_id: str, stage: str) -> None:
    """Policy optimization online_dpo: sample two responses per prompt, judge them and take a DPO step, each step."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))


@stage_task("train.best_of_n")
def best_of_n(task: Task, run_id: str, stage: str) -> None:
    """Stage 6 with policy_optimization=best_of_n: SFT on the reward model's best of n samples per prompt."""
    send(execute.run_training(runtime(), run_id, stage, worker_identity(task.request.id)))
