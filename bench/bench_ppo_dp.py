"""Data-parallel PPO: episodes per second on 1 process against N processes under torchrun, same global batch.

Both runs train the same model (the embedded SmolLM2-135M-Instruct unless --model) on the same red-team prompts
(rlaif/data/red_team_prompts.dev.jsonl) with the rule-based refusal scorer and the same PPOConfig: 8 prompts x 1
sample per update, 2 minibatches of 4 in micro-batches of 2, 1 PPO epoch, up to 32 new tokens, float32; no step
states or sample tables during the run. The CPU cores are split evenly: one process gets all of them as torch
threads, each of N ranks gets cores / N (torchrun's default is 1). The rate is timed from the end of the first
(warm-up) update to the end of the last. The machine's load (`uptime`) is printed before and after: on a shared
machine the figures move with it.

    python bench/bench_ppo_dp.py                                   # the embedded 135M model (minutes)
    python bench/bench_ppo_dp.py --model tiny-random-llama --updates 3   # smoke run, ~75 s on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS_PER_STEP = 8


def worker(args: argparse.Namespace) -> None:
    """One process or one rank: train, and (rank 0) write the update end times to args.timings."""
    import torch

    from rlaif.config import PPOConfig
    from rlaif.data import DATA_DIR
    from rlaif.distributed import init_distributed, shutdown_distributed
    from rlaif.prompts import load_prompts
    from rlaif.scorers import refusal_scorer
    from rlaif.stages.ppo import train_ppo

    torch.set_num_threads(args.threads)
    prompts = [item.prompt for item in load_prompts(DATA_DIR / "red_team_prompts.dev.jsonl", 200)]
    cfg = PPOConfig(
        total_episodes=args.updates * PROMPTS_PER_STEP, prompts_per_step=PROMPTS_PER_STEP, num_minibatches=2,
        micro_batch_size=2, ppo_epochs=1, response_length=args.response_length, dtype="float32",
        checkpoint_every=10**6, sample_every=10**6,
    )  # fmt: skip
    ends: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        train_ppo(prompts, args.model, refusal_scorer(), cfg, Path(out), seed=0, progress=False,
                  on_step=lambda step, metrics: ends.append(time.perf_counter()))  # fmt: skip
    if init_distributed().is_main:
        args.timings.write_text(json.dumps(ends))
    shutdown_distributed()


def measure(args: argparse.Namespace, processes: int) -> dict[str, float]:
    """Run the worker on `processes` processes; episodes/s over the updates after the first."""
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        common = [str(Path(__file__).resolve()), "--worker", "--model", args.model, "--updates", str(args.updates),
                  "--response-length", str(args.response_length), "--timings", str(timings),
                  "--threads", str(max(1, cores // processes))]  # fmt: skip
        if processes == 1:
            command = [sys.executable, *common]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                       str(processes), *common]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        ends = json.loads(timings.read_text())
    timed = len(ends) - 1
    return {"processes": processes, "episodes_per_s": timed * PROMPTS_PER_STEP / (ends[-1] - ends[0]),
            "update_s": (ends[-1] - ends[0]) / timed, "command_s": wall}  # fmt: skip


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--updates", type=int, default=4, help="PPO updates per run (the first is the warm-up).")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--nproc", type=int, default=2, help="Processes of the data-parallel run.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from rlaif.modeling import prepare_model

    prepare_model(args.model)  # converted once, before either run is timed
    print(f"load before: {uptime()}")
    rows = [measure(args, 1), measure(args, args.nproc)]
    print(f"load after:  {uptime()}")
    print(f"{'processes':>9} {'episodes/s':>11} {'s/update':>9} {'command s':>10} {'speed-up':>9}")
    for row in rows:
        speedup = row["episodes_per_s"] / rows[0]["episodes_per_s"]
        print(f"{row['processes']:>9} {row['episodes_per_s']:>11.2f} {row['update_s']:>9.2f} "
              f"{row['command_s']:>10.1f} {speedup:>8.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
