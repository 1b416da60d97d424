"""DPO training throughput: rlaif's train_dpo against TRL's DPOTrainer.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same pairs (prompt + chosen / rejected from the
shared human preference pairs, hard labels: p = 1 for chosen, the paper's sigmoid loss, beta 0.1), same max length,
batch and micro-batch sizes, learning rate and schedule, one epoch. Each trainer runs in its own subprocess, one
after the other, so peak RSS is its own. Throughput is over the optimizer steps of the epoch only: rlaif's
per-step times from metrics.jsonl (`perf/step_s`, `perf/step_cpu_s`), TRL's from a callback between on_step_begin
and on_step_end (bench_training.py's). The workload (non-pad prompt + response tokens of both sides, or pairs) is
counted once with rlaif's tokenisation and divided by each time.

The reference model is where the two designs differ: rlaif scores every pair with the SFT reference once, before
training (`ref_logps.jsonl`), then frees it, so a step is one forward/backward of the policy over both sides.
TRL by default keeps a copy of the model as the reference and runs it on every step; with
`precompute_ref_log_probs=True` it does what rlaif does. So there are three TRL rows: its defaults (bf16 autocast,
gradient checkpointing on, reference per step), gradient checkpointing off, and checkpointing off with the
reference precomputed (the like-for-like row). The once-per-stage reference pass is outside the step times of
both; the process time (load, tokenise, reference pass, loop, save) is printed next to them.

    python bench/bench_dpo.py                      # about 4 minutes on 2 CPU cores
    python bench/bench_dpo.py --model tiny-random-llama --examples 16 --batch-size 4 --micro-batch-size 2   # smoke
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

# The SFT / reward-model benchmark's data, timing callback and TRL arguments, so both benchmarks measure alike.
from bench_training import DEFAULT_PAIRS, _loop_seconds, _step_timer, _trl_common, _version, load_pairs

REPO = Path(__file__).resolve().parent.parent
# The shared data folder next to the checkout, else the copy shipped in the package (a git worktree elsewhere).
PAIRS = DEFAULT_PAIRS if DEFAULT_PAIRS.is_file() else REPO / "rlaif" / "data" / "preference_pairs.dev.jsonl"
WORKERS = ["rlaif-dpo", "trl-dpo", "trl-dpo-nogc", "trl-dpo-precomputed"]
BETA = 0.1
LEARNING_RATE = 1e-5  # = bench_training's TRL learning rate (_trl_common)


def workload_tokens(model: str, rows: list[dict[str, str]], max_length: int) -> int:
    """Non-pad tokens per epoch: prompt + chosen and prompt + rejected, as rlaif tokenises them."""
    from rlaif.modeling import load_tokenizer
    from rlaif.training import tokenize_chat

    tokenizer = load_tokenizer(model)
    sides = ("chosen", "rejected")
    return sum(len(tokenize_chat(tokenizer, r["prompt"], r[s], max_length).input_ids) for r in rows for s in sides)


# --- workers (one per subprocess) ------------------------------------------------------------------------------


def run_rlaif_dpo(args: argparse.Namespace, rows: list[dict[str, str]], out: Path) -> tuple[float, float]:
    from rlaif.config import DPOConfig
    from rlaif.records import LabelRecord
    from rlaif.stages.dpo import train_dpo

    labels = [
        LabelRecord(
            id=str(i), prompt=r["prompt"], response_a=r["chosen"], response_b=r["rejected"], p_a=1.0, judgements=[]
        )
        for i, r in enumerate(rows)
    ]
    cfg = DPOConfig(
        beta=BETA, loss="sigmoid", epochs=1, learning_rate=LEARNING_RATE, warmup_ratio=0.1,
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, max_length=args.max_length,
        eval_fraction=0.0, checkpoint_every=10**6, dtype="auto",
    )  # fmt: skip
    train_dpo(labels, args.model, cfg, out, seed=0, progress=False)
    return _loop_seconds(out / "metrics.jsonl")


def run_trl_dpo(
    args: argparse.Namespace,
    rows: list[dict[str, str]],
    out: Path,
    gradient_checkpointing: bool | None,
    precompute: bool,
) -> tuple[float, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

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
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    config = DPOConfig(
        **_trl_common(args, out, gradient_checkpointing),
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
    )
    timer = _step_timer()
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=load_tokenizer(args.model), callbacks=[timer]
    )
    trainer.train()
    return timer.wall, timer.cpu


def worker(args: argparse.Namespace) -> None:
    """Run one trainer and print one JSON line: loop seconds, peak RSS."""
    import torch

    rows = load_pairs(args.pairs, args.examples)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        out = Path(tmp)
        started = time.perf_counter()
        if args.worker == "rlaif-dpo":
            loop = run_rlaif_dpo(args, rows, out)
        elif args.worker == "trl-dpo":
            loop = run_trl_dpo(args, rows, out, None, precompute=False)
        elif args.worker == "trl-dpo-nogc":
            loop = run_trl_dpo(args, rows, out, False, precompute=False)
        else:
            loop = run_trl_dpo(args, rows, out, False, precompute=True)
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
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="JSONL of prompt, chosen, rejected.")
    parser.add_argument("--examples", type=int, default=32, help="Preference pairs (one epoch).")
    parser.add_argument("--batch-size", type=int, default=8, help="Pairs per optimizer step.")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="Pairs per forward pass (2x sequences).")
    parser.add_argument("--max-length", type=int, default=256, help="Prompt + response tokens kept per side.")
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
    tokens = workload_tokens(args.model, rows, args.max_length)
    print(
        f"model {args.model}, {args.examples} pairs, batch {args.batch_size}, micro-batch {args.micro_batch_size}, "
        f"max length {args.max_length}, beta {BETA}, sigmoid loss; workload {tokens} tokens (both sides); "
        f"trl {_version('trl')}, transformers {_version('transformers')}, torch {_version('torch')}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
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
        print(
            f"{name:20s} {tokens / r['loop_s']:8.1f} tokens/s wall ({r['loop_s']:6.1f} s)  "
            f"{tokens / r['loop_cpu_s']:8.1f} tokens/CPU-s ({r['loop_cpu_s']:6.1f} s)  "
            f"{args.examples / r['loop_s']:6.2f} pairs/s  peak RSS {r['peak_rss_mib']:6.0f} MiB  "
            f"(process {r['total_s']:.0f} s, {r['threads']} threads)",
            flush=True,
        )

    # Ratios: rlaif over TRL. CPU time is the fairer figure on a shared machine (wall time includes waiting for
    # cores that other processes hold); on an idle machine the two agree.
    ours = "rlaif-dpo"
    for theirs in WORKERS[1:]:
        if ours in results and theirs in results:
            a, b = results[ours], results[theirs]
            print(
                f"{ours} / {theirs}: {b['loop_s'] / a['loop_s']:.2f}x throughput (wall), "
                f"{b['loop_cpu_s'] / a['loop_cpu_s']:.2f}x (CPU time), {a['peak_rss_mib'] / b['peak_rss_mib']:.2f}x peak RSS"
            )
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
