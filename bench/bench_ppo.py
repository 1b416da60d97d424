"""Online RL throughput: rlaif's PPO against TRL's RLOOTrainer, episodes per second and peak memory.

TRL 1.16 ships no PPO trainer; RLOO is its nearest online-RL peer. It does less work per episode: no value
model (PPO trains a second network of the policy's size), a leave-one-out baseline instead of GAE. Both run
on the same model (the embedded SmolLM2-135M-Instruct unless --model), the same red-team prompts (the first
`prompts_per_step x (steps + 1)` of shared/data/red_team_prompts.dev.jsonl, each seen once), the same sampling
(temperature 0.7, no top-k/top-p, at most 48 new tokens), the same number of completions per step (2 prompts x 4
samples = 8 episodes), the same KL coefficient to the frozen reference (0.05) and learning rate, the same
reward (the rule-based refusal scorer of rlaif.scorers, wrapped as a TRL reward function), one gradient pass
over each batch and one optimizer step per batch (PPO: `ppo_epochs=1, num_minibatches=1`; RLOO:
`num_iterations=1`). TRL keeps its own defaults otherwise (bf16 autocast, gradient checkpointing on, the whole
batch of 8 in one forward pass); rlaif keeps PPO's (`ppo.dtype=auto`: bf16 autocast on this CPU; micro-batches
of 4; KV-cache sampling), with no step checkpoints or sample tables during the run, as TRL saves none either.
PPO runs twice: `rlaif-ppo` with its default separate value model (a second 135M transformer, trained with its
own AdamW state), and `rlaif-ppo-lean` with the memory levers: `ppo.value_network=shared` (a value head on the
policy's transformer, as in lm-human-preferences) and `ppo.gradient_checkpointing=true`. `rlaif-ppo-lora` adds
LoRA to those (`ppo.lora_rank`, `--lora-rank`, alpha = 2 x rank): one base model for policy, reference (the adapter
switched off) and value head, and AdamW state for the adapter only; the shared learning rate is far too small
for LoRA to learn much, which does not change the cost of a step.

Each trainer runs in its own subprocess, so peak RSS is its own: the high-water mark of the process (VmHWM, the
kernel's figure) and the largest RSS seen by a psutil sampler every 50 ms. The rate is measured from the end of
the first (warm-up) step to the end of the last: wall-clock and process CPU time (user + system), both printed;
on a shared machine the CPU-time rate is the steadier figure.

    python bench/bench_ppo.py                       # about 4-5 minutes on 2 busy CPU cores
    python bench/bench_ppo.py --model tiny-random-llama --steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = REPO.parent / "shared" / "data" / "red_team_prompts.dev.jsonl"
# rlaif-ppo: PPO's defaults (a separate value model started from the policy); rlaif-ppo-lean: a value head on the
# policy's transformer (ppo.value_network=shared) and gradient checkpointing, the memory levers.
PPO_VARIANTS = {
    "rlaif-ppo": {"value_network": "separate", "gradient_checkpointing": False},
    "rlaif-ppo-lean": {"value_network": "shared", "gradient_checkpointing": True},
    "rlaif-ppo-lora": {"value_network": "shared", "gradient_checkpointing": True},  # + lora_rank from --lora-rank
}
WORKERS = [*PPO_VARIANTS, "trl-rloo"]
PROMPTS_PER_STEP = 2
SAMPLES_PER_PROMPT = 4  # 8 completions per step
TEMPERATURE = 0.7
KL_COEF = 0.05
LEARNING_RATE = 1e-6


def load_prompts(path: Path, n: int) -> list[str]:
    """The first n non-empty prompts of a JSONL file with a `prompt` field."""
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            prompt = json.loads(line)["prompt"].strip()
            if prompt:
                prompts.append(prompt)
            if len(prompts) == n:
                return prompts
    raise SystemExit(f"{path}: only {len(prompts)} prompts, {n} needed")


class StepClock:
    """Wall and process CPU time at the end of every step, and the process's peak RSS (psutil sampler + VmHWM)."""

    def __init__(self) -> None:
        import psutil

        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.peak_sampled = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_sampled = max(self.peak_sampled, self._process.memory_info().rss)

    def tick(self) -> None:
        times = self._process.cpu_times()
        self.walls.append(time.perf_counter())
        self.cpus.append(times.user + times.system)

    def result(self, episodes_per_step: int) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        timed = len(self.walls) - 1  # steps after the warm-up step
        if timed < 1:
            raise SystemExit(f"only {len(self.walls)} steps recorded; need a warm-up step and at least one more")
        return {
            "timed_steps": timed,
            "episodes": timed * episodes_per_step,
            "wall_s": self.walls[-1] - self.walls[0],
            "cpu_s": self.cpus[-1] - self.cpus[0],
            "step_wall_s": [b - a for a, b in zip(self.walls, self.walls[1:], strict=False)],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_sampled_mib": self.peak_sampled / 2**20,
        }


# --- workers (one per subprocess) ------------------------------------------------------------------------------


def run_rlaif_ppo(args: argparse.Namespace, prompts: list[str], out: Path, clock: StepClock) -> dict[str, Any]:
    from rlaif.config import PPOConfig
    from rlaif.scorers import refusal_scorer
    from rlaif.stages.ppo import train_ppo

    batch = PROMPTS_PER_STEP * SAMPLES_PER_PROMPT
    lora = {"lora_rank": args.lora_rank, "lora_alpha": 2 * args.lora_rank} if args.worker == "rlaif-ppo-lora" else {}
    cfg = PPOConfig(
        total_episodes=(args.steps + 1) * batch, prompts_per_step=PROMPTS_PER_STEP,
        samples_per_prompt=SAMPLES_PER_PROMPT, num_minibatches=args.ppo_minibatches, ppo_epochs=args.ppo_epochs,
        micro_batch_size=args.ppo_micro_batch_size, response_length=args.response_length,
        temperature=TEMPERATURE, kl_coef=KL_COEF, learning_rate=LEARNING_RATE, dtype=args.ppo_dtype,
        checkpoint_every=10**6, sample_every=10**6,
        **PPO_VARIANTS[args.worker], **lora,
    )  # fmt: skip
    lengths: list[float] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        clock.tick()
        lengths.append(metrics["val/mean_response_length"])

    train_ppo(prompts, args.model, refusal_scorer(), cfg, out, seed=0, progress=False, on_step=on_step)
    return {"mean_completion_tokens": sum(lengths[1:]) / len(lengths[1:])}


def run_trl_rloo(args: argparse.Namespace, prompts: list[str], out: Path, clock: StepClock) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rlaif.modeling import load_tokenizer, resolve_model
    from rlaif.scorers import refusal_scorer

    score = refusal_scorer()

    def refusal_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        """The rule-based refusal scorer as a TRL reward function (conversational prompts and completions)."""
        texts = [c[-1]["content"] for c in completions]
        users = [p[-1]["content"] for p in prompts]
        return score(users, texts).tolist()

    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.tick()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    config = RLOOConfig(
        output_dir=str(out), per_device_train_batch_size=PROMPTS_PER_STEP * SAMPLES_PER_PROMPT,
        gradient_accumulation_steps=1, num_generations=SAMPLES_PER_PROMPT, max_completion_length=args.response_length,
        temperature=TEMPERATURE, top_k=0, top_p=1.0, beta=KL_COEF, num_iterations=1, learning_rate=LEARNING_RATE,
        max_steps=args.steps + 1, shuffle_dataset=False, save_strategy="no", report_to="none", logging_steps=1,
        disable_tqdm=True, seed=0, use_cpu=True,
    )  # fmt: skip
    trainer = RLOOTrainer(
        model=model, reward_funcs=refusal_reward, args=config, train_dataset=dataset,
        processing_class=load_tokenizer(args.model), callbacks=[Clock()],
    )  # fmt: skip
    trainer.train()
    return {"mean_completion_tokens": sum(lengths[1:]) / max(len(lengths[1:]), 1)}


def worker(args: argparse.Namespace) -> None:
    """Run one trainer and print one JSON line: timed steps, wall and CPU seconds, peak RSS."""
    import torch

    prompts = load_prompts(args.prompts, PROMPTS_PER_STEP * (args.steps + 1))
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        started = time.perf_counter()
        if args.worker in PPO_VARIANTS:
            extra = run_rlaif_ppo(args, prompts, Path(tmp), clock)
        else:
            extra = run_trl_rloo(args, prompts, Path(tmp), clock)
        total = time.perf_counter() - started
    result = {"worker": args.worker, **clock.result(PROMPTS_PER_STEP * SAMPLES_PER_PROMPT), **extra}
    print(json.dumps({**result, "total_s": total, "threads": torch.get_num_threads()}))


# --- driver ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Registry name or local folder.")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL with a `prompt` field.")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per trainer, after one warm-up step.")
    parser.add_argument("--response-length", type=int, default=48, help="Most new tokens per completion.")
    parser.add_argument("--ppo-epochs", type=int, default=1, help="PPO epochs per batch (RLOO: 1 iteration).")
    parser.add_argument("--ppo-minibatches", type=int, default=1, help="PPO minibatches per epoch (RLOO: 1).")
    parser.add_argument("--ppo-micro-batch-size", type=int, default=4, help="Sequences per PPO forward pass.")
    parser.add_argument("--ppo-dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="ppo.dtype.")
    parser.add_argument("--lora-rank", type=int, default=16, help="ppo.lora_rank of the rlaif-ppo-lora row.")
    parser.add_argument("--only", nargs="*", choices=WORKERS, default=WORKERS, help="Run only these trainers.")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from rlaif.modeling import prepare_model

    prepare_model(args.model)
    batch = PROMPTS_PER_STEP * SAMPLES_PER_PROMPT
    print(
        f"model {args.model}; {PROMPTS_PER_STEP} prompts x {SAMPLES_PER_PROMPT} completions = {batch} episodes per "
        f"step, {args.response_length} new tokens at most, 1 warm-up + {args.steps} timed steps; PPO {args.ppo_epochs} "
        f"epoch(s) x {args.ppo_minibatches} minibatch(es), dtype {args.ppo_dtype}; trl {_version('trl')}, "
        f"transformers {_version('transformers')}, torch {_version('torch')}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--prompts", str(args.prompts),
                   "--steps", str(args.steps), "--response-length", str(args.response_length),
                   "--ppo-epochs", str(args.ppo_epochs), "--ppo-minibatches", str(args.ppo_minibatches),
                   "--ppo-micro-batch-size", str(args.ppo_micro_batch_size), "--ppo-dtype", args.ppo_dtype,
                   "--lora-rank", str(args.lora_rank)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
        r = results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{name:16s} {r['episodes'] / r['wall_s']:6.3f} episodes/s wall ({r['wall_s']:6.1f} s)  "
            f"{r['episodes'] / r['cpu_s']:6.3f} episodes/CPU-s ({r['cpu_s']:6.1f} CPU s)  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB (sampled {r['peak_rss_sampled_mib']:.0f})  "
            f"{r['mean_completion_tokens']:.1f} tokens/completion  "
            f"(process {r['total_s']:.0f} s, {r['threads']} threads, load average {os.getloadavg()[0]:.1f}; "
            f"step wall s {[round(s, 1) for s in r['step_wall_s']]})",
            flush=True,
        )
    for name in PPO_VARIANTS:
        if name in results and "trl-rloo" in results:
            ppo, rloo = results[name], results["trl-rloo"]
            wall = (ppo["episodes"] / ppo["wall_s"]) / (rloo["episodes"] / rloo["wall_s"])
            cpu = (ppo["episodes"] / ppo["cpu_s"]) / (rloo["episodes"] / rloo["cpu_s"])
            print(
                f"{name} / trl-rloo: {wall:.2f}x episodes/s (wall), {cpu:.2f}x episodes/CPU-s, "
                f"{ppo['peak_rss_mib'] / rloo['peak_rss_mib']:.2f}x peak RSS"
            )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
