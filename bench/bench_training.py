"""Training throughput: rlaif's SFT and reward-model loops against TRL's SFTTrainer and RewardTrainer.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same data (prompt + chosen / rejected from
the shared human preference pairs), same max length, batch and micro-batch sizes, one epoch. Each trainer runs
in its own subprocess, one after the other, so peak RSS is its own. Throughput is over the optimizer steps
of the epoch only (no model loading, tokenising or saving): rlaif's per-step times from metrics.jsonl
(`perf/step_s`, `perf/step_cpu_s`), TRL's from a callback between on_step_begin and on_step_end. Wall and
process CPU time are both reported; on a shared machine CPU time is the fairer one. The workload (non-pad
prompt + response tokens, or pairs) is counted once with rlaif's tokenisation and divided by each time. TRL runs with its own defaults (bf16 autocast on, gradient checkpointing on) and, as a
second row, with gradient checkpointing off.

    python bench/bench_training.py              # about 4 minutes on 2 CPU cores
    python bench/bench_training.py --model tiny-random-llama --examples 16   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = REPO.parent / "shared" / "data" / "preference_pairs.dev.jsonl"
WORKERS = ["rlaif-sft", "trl-sft", "trl-sft-nogc", "rlaif-rm", "trl-rm", "trl-rm-nogc"]


def load_pairs(path: Path, n: int) -> list[dict[str, str]]:
    """The first n pairs whose prompt and responses are non-empty."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["prompt"].strip() and row["chosen"].strip() and row["rejected"].strip():
                rows.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
            if len(rows) == n:
                break
    if len(rows) < n:
        raise SystemExit(f"{path}: only {len(rows)} usable pairs, --examples {n} asked for more")
    return rows


def workload_tokens(model: str, rows: list[dict[str, str]], max_length: int, rm: bool) -> int:
    """Non-pad tokens per epoch: prompt + chosen (SFT), or prompt + chosen and prompt + rejected (RM)."""
    from rlaif.modeling import load_tokenizer
    from rlaif.training import tokenize_chat

    tokenizer = load_tokenizer(model)
    sides = ("chosen", "rejected") if rm else ("chosen",)
    return sum(len(tokenize_chat(tokenizer, r["prompt"], r[s], max_length).input_ids) for r in rows for s in sides)


# --- workers (one per subprocess) ------------------------------------------------------------------------------


def run_rlaif_sft(args: argparse.Namespace, rows: list[dict[str, str]], out: Path) -> tuple[float, float]:
    from rlaif.config import SFTConfig
    from rlaif.records import SFTExample
    from rlaif.stages.sft import train_sft

    examples = [SFTExample(id=str(i), prompt=r["prompt"], response=r["chosen"]) for i, r in enumerate(rows)]
    cfg = SFTConfig(
        epochs=1, learning_rate=1e-5, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        max_length=args.max_length, eval_fraction=0.0, checkpoint_every=10**6, dtype="auto",
    )  # fmt: skip
    train_sft(examples, args.model, cfg, out, seed=0, progress=False)
    return _loop_seconds(out / "metrics.jsonl")


def run_rlaif_rm(args: argparse.Namespace, rows: list[dict[str, str]], out: Path) -> tuple[float, float]:
    from rlaif.config import RewardModelConfig
    from rlaif.records import LabelRecord
    from rlaif.stages.reward_model import train_reward_model

    labels = [
        LabelRecord(
            id=str(i), prompt=r["prompt"], response_a=r["chosen"], response_b=r["rejected"], p_a=1.0, judgements=[]
        )
        for i, r in enumerate(rows)
    ]
    cfg = RewardModelConfig(
        epochs=1, learning_rate=1e-5, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
        max_length=args.max_length, eval_fraction=0.0, checkpoint_every=10**6, dtype="auto",
    )  # fmt: skip
    train_reward_model(labels, args.model, cfg, out, seed=0, progress=False)
    return _loop_seconds(out / "metrics.jsonl")


def _loop_seconds(metrics: Path) -> tuple[float, float]:
    """(wall, CPU) seconds summed over the optimizer steps in metrics.jsonl."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return sum(r["perf/step_s"] for r in rows), sum(r["perf/step_cpu_s"] for r in rows)


def _step_timer() -> Any:
    """A TRL/transformers callback summing wall and CPU time between on_step_begin and on_step_end."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        wall = cpu = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.wall += time.perf_counter() - self._start[0]
            self.cpu += time.process_time() - self._start[1]

    return StepTimer()


def _trl_common(args: argparse.Namespace, out: Path, gradient_checkpointing: bool | None) -> dict[str, Any]:
    common: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": args.micro_batch_size,
        "gradient_accumulation_steps": args.batch_size // args.micro_batch_size,
        "num_train_epochs": 1,
        "learning_rate": 1e-5,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0.1,  # transformers 5: a float below 1 is a ratio of the total steps
        "max_length": args.max_length,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": True,
    }
    if gradient_checkpointing is not None:  # None: TRL's default (on)
        common["gradient_checkpointing"] = gradient_checkpointing
    return common


def run_trl_sft(
    args: argparse.Namespace, rows: list[dict[str, str]], out: Path, gradient_checkpointing: bool | None
) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from rlaif.modeling import load_tokenizer, resolve_model

    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["chosen"]}],
            }
            for r in rows
        ]
    )
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    config = SFTConfig(**_trl_common(args, out, gradient_checkpointing))
    timer = _step_timer()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(args.model), callbacks=[timer]
    )
    trainer.train()
    return timer.wall, timer.cpu


def run_trl_rm(
    args: argparse.Namespace, rows: list[dict[str, str]], out: Path, gradient_checkpointing: bool | None
) -> float:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from rlaif.modeling import load_tokenizer, resolve_model

    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows
        ]
    )
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model(args.model), num_labels=1, dtype=torch.float32, pad_token_id=tokenizer.pad_token_id
    )
    config = RewardConfig(**_trl_common(args, out, gradient_checkpointing))
    timer = _step_timer()
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    return timer.wall, timer.cpu


def worker(args: argparse.Namespace) -> None:
    """Run one trainer and print one JSON line: loop seconds, peak RSS."""
    import torch

    rows = load_pairs(args.pairs, args.examples)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        out = Path(tmp)
        started = time.perf_counter()
        if args.worker == "rlaif-sft":
            loop = run_rlaif_sft(args, rows, out)
        elif args.worker == "rlaif-rm":
            loop = run_rlaif_rm(args, rows, out)
        elif args.worker.startswith("trl-sft"):
            loop = run_trl_sft(args, rows, out, False if args.worker.endswith("nogc") else None)
        else:
            loop = run_trl_rm(args, rows, out, False if args.worker.endswith("nogc") else None)
        total = time.perf_counter() - started
    loop_s, loop_cpu_s = loop
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "worker": args.worker,
                "loop_s": loop_s,
                "loop_cpu_s": loop_cpu_s,
                "total_s": total,
                "peak_rss_mib": peak_mib,
                "threads": torch.get_num_threads(),
            }
        )
    )


# --- driver ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Registry name or local folder.")
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="JSONL of prompt, chosen, rejected.")
    parser.add_argument("--examples", type=int, default=32, help="SFT examples and RM pairs (one epoch).")
    parser.add_argument("--batch-size", type=int, default=8, help="Sequences (SFT) or pairs (RM) per optimizer step.")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="Sequences or pairs per forward pass.")
    parser.add_argument("--max-length", type=int, default=256, help="Prompt + response tokens kept.")
    parser.add_argument("--only", nargs="*", choices=WORKERS, default=WORKERS, help="Run only these trainers.")
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.examples % args.batch_size:
        raise SystemExit(
            f"--examples {args.examples} must be a multiple of --batch-size {args.batch_size} (no wrap-around)"
        )

    from rlaif.modeling import prepare_model

    prepare_model(args.model)
    rows = load_pairs(args.pairs, args.examples)
    tokens = {"sft": workload_tokens(args.model, rows, args.max_length, rm=False)}
    tokens["rm"] = workload_tokens(args.model, rows, args.max_length, rm=True)
    print(
        f"model {args.model}, {args.examples} examples/pairs, batch {args.batch_size}, micro-batch "
        f"{args.micro_batch_size}, max length {args.max_length}; SFT workload {tokens['sft']} tokens, RM workload "
        f"{tokens['rm']} tokens; trl {_version('trl')}, transformers {_version('transformers')}, torch {_version('torch')}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        command = [sys.executable, __file__, "--worker", name, "--model", args.model, "--pairs", str(args.pairs),
                   "--examples", str(args.examples), "--batch-size", str(args.batch_size),
                   "--micro-batch-size", str(args.micro_batch_size), "--max-length", str(args.max_length)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[name]
        work = tokens["sft"] if "sft" in name else args.examples
        unit = "tokens" if "sft" in name else "pairs"
        print(
            f"{name:13s} {work / r['loop_s']:8.2f} {unit}/s wall ({r['loop_s']:6.1f} s)  "
            f"{work / r['loop_cpu_s']:8.2f} {unit}/CPU-s ({r['loop_cpu_s']:6.1f} s)  "
            f"peak RSS {r['peak_rss_mib']:6.0f} MiB  (process {r['total_s']:.0f} s, {r['threads']} threads)",
            flush=True,
        )

    # Ratios: rlaif over TRL. CPU time is the fairer figure on a shared machine (wall time includes waiting for
    # cores that other processes hold); on an idle machine the two agree.
    for kind, ours in (("sft", "rlaif-sft"), ("rm", "rlaif-rm")):
        for theirs in (f"trl-{kind}", f"trl-{kind}-nogc"):
            if ours in results and theirs in results:
                a, b = results[ours], results[theirs]
                print(
                    f"{ours} / {theirs}: {b['loop_s'] / a['loop_s']:.2f}x throughput (wall), "
                    f"{b['loop_cpu_s'] / a['loop_cpu_s']:.2f}x (CPU time), {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x peak RSS"
                )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
