"""Generation throughput on the embedded model: naive one-prompt-at-a-time `generate` vs our batched
HFGenerator (fp32 and bf16), and vLLM (start-up seconds and tokens/s) when it is importable.

Workload: the first prompts of the shared red-team and helpful dev sets (half each), greedy, `--max-new-tokens`.
Tokens/s counts useful tokens only (each completion up to and including its EOS), so the padding and the
finished rows that a batch carries along count against the batched backend. The break-even line says how
many generated tokens a job needs before vLLM's start-up is paid back.

    python bench/bench_generation.py                      # transformers only (main venv)
    /work/venv-vllm/bin/python bench/bench_generation.py  # adds vLLM rows
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil
import torch

from rlaif.config import SamplingConfig
from rlaif.generation import Conversation
from rlaif.generation.common import encode_conversations, stop_token_ids, to_completion
from rlaif.generation.hf import HFGenerator
from rlaif.generation.vllm import vllm_available

DATA = Path(os.environ.get("RLAIF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODEL = "smollm2-135m-instruct"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (vLLM's engine runs in a child).

    Several processes share the cores of a dev machine; CPU seconds per token stay meaningful when wall time does not.
    """
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Row(NamedTuple):
    backend: str
    workload: str
    tokens: int
    seconds: float
    cpu: float
    startup: float

    def markdown(self) -> str:
        return (
            f"| {self.backend} | {self.workload} | {self.tokens} | {self.seconds:.1f} | {self.tokens / self.seconds:.1f} "
            f"| {self.cpu:.1f} | {self.tokens / self.cpu:.1f} | {self.startup:.1f} |"
        )


class Rows(list[Row]):
    """The measured rows; each is printed as soon as it is measured, so a crash later loses nothing."""

    def append(self, row: Row) -> None:
        print("measured:", row.markdown(), flush=True)
        super().append(row)


def load_conversations(count: int) -> list[Conversation]:
    """The first count/2 red-team and count/2 helpful dev prompts, interleaved."""
    sets = []
    for name in ("red_team_prompts.dev.jsonl", "helpful_prompts.dev.jsonl"):
        lines = (DATA / name).read_text(encoding="utf-8").splitlines()
        sets.append([json.loads(line)["prompt"] for line in lines[: (count + 1) // 2]])
    prompts = [p for pair in zip(*sets, strict=True) for p in pair][:count]
    return [[{"role": "user", "content": p}] for p in prompts]


def naive(generator: HFGenerator, conversations: list[Conversation], max_new_tokens: int) -> tuple[int, float, float]:
    """(useful tokens, wall seconds, CPU seconds) of plain `model.generate`, one prompt at a time."""
    prompts = encode_conversations(generator.tokenizer, conversations)
    stops = stop_token_ids(generator.tokenizer, generator.model.generation_config.eos_token_id)
    tokens = 0
    started, cpu = time.perf_counter(), cpu_seconds()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = generator.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=generator.pad_id,
            )
        tokens += len(to_completion(generator.tokenizer, out[0, len(prompt) :].tolist(), stops).token_ids)
    return tokens, time.perf_counter() - started, cpu_seconds() - cpu


def timed(generate, conversations: list[Conversation], n: int, sampling: SamplingConfig) -> tuple[int, float, float]:
    """(useful tokens, wall seconds, CPU seconds) of one call of a Generator's generate."""
    started, cpu = time.perf_counter(), cpu_seconds()
    results = generate(conversations, n, sampling, seed=0, progress=False)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    return sum(len(c.token_ids) for row in results for c in row), seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="Prompts of the greedy workload (batched backends).")
    parser.add_argument("--naive-prompts", type=int, default=8, help="Prompts for the slow one-at-a-time baseline.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="HFGenerator sequences per generate call.")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--vllm-dtypes", default="float32,bfloat16", help="Comma list; empty = skip vLLM.")
    parser.add_argument("--pairs-prompts", type=int, default=16, help="Prompts of the pairs-like workload.")
    parser.add_argument("--pairs-n", type=int, default=4, help="Samples per prompt in the pairs-like workload.")
    args = parser.parse_args()

    conversations = load_conversations(args.prompts)
    pairs_prompts = conversations[: args.pairs_prompts]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    sampled = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens)
    greedy_work, pairs_work = f"greedy x{args.prompts}", f"T=1 n={args.pairs_n} x{len(pairs_prompts)}"
    rows = Rows()

    for dtype in args.dtypes.split(","):
        started = time.perf_counter()
        hf = HFGenerator(MODEL, dtype=dtype, batch_size=args.batch_size)
        load = time.perf_counter() - started
        naive(hf, conversations[:1], 4)  # warm-up: first-call allocations and kernel selection
        name = f"HFGenerator {dtype} bs{args.batch_size}"
        rows.append(
            Row(
                f"naive batch-1 {dtype}",
                f"greedy x{args.naive_prompts}",
                *naive(hf, conversations[: args.naive_prompts], args.max_new_tokens),
                load,
            )
        )
        rows.append(Row(name, greedy_work, *timed(hf.generate, conversations, 1, greedy), load))
        rows.append(Row(name, pairs_work, *timed(hf.generate, pairs_prompts, args.pairs_n, sampled), load))
        del hf

    vllm_dtypes = [d for d in args.vllm_dtypes.split(",") if d]
    if vllm_dtypes and not vllm_available():
        print("vLLM is not installed here: skipping its rows (run with the vllm venv's python to include them)")
        vllm_dtypes = []
    for dtype in vllm_dtypes:
        from rlaif.generation.vllm import VLLMGenerator

        engine = VLLMGenerator(MODEL, dtype=dtype)
        timed(engine.generate, conversations[:1], 1, SamplingConfig(temperature=0.0, max_new_tokens=4))  # warm-up
        rows.append(
            Row(f"vLLM {dtype}", greedy_work, *timed(engine.generate, conversations, 1, greedy), engine.startup_seconds)
        )
        rows.append(
            Row(
                f"vLLM {dtype}",
                pairs_work,
                *timed(engine.generate, pairs_prompts, args.pairs_n, sampled),
                engine.startup_seconds,
            )
        )
        engine.close()

    print_table(rows, args)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nmodel {MODEL}, max_new_tokens {args.max_new_tokens}, {os.cpu_count()} CPU cores, "
        f"load average (1 min) {os.getloadavg()[0]:.1f}\n"
    )
    print("| backend | workload | tokens | wall s | tokens/s | CPU s | tokens/CPU-s | load or start-up s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(r.markdown())
    by_key = {(r.backend, r.workload.split(" x")[0]): r for r in rows}
    print()
    for naive_row in (r for r in rows if r.backend.startswith("naive")):
        dtype = naive_row.backend.split()[-1]
        batched = by_key.get((f"HFGenerator {dtype} bs{args.batch_size}", "greedy"))
        if batched:
            wall = (batched.tokens / batched.seconds) / (naive_row.tokens / naive_row.seconds)
            cpu = (batched.tokens / batched.cpu) / (naive_row.tokens / naive_row.cpu)
            print(f"batched / naive speed-up ({dtype}, greedy): {wall:.1f}x wall, {cpu:.1f}x per CPU-second")
    for r in (r for r in rows if r.backend.startswith("vLLM")):
        workload, dtype = r.workload.split(" x")[0], r.backend.split()[-1]
        hf = by_key.get((f"HFGenerator {dtype} bs{args.batch_size}", workload))
        if hf is None:
            continue
        r_vllm, r_hf = r.tokens / r.seconds, hf.tokens / hf.seconds
        if r_vllm <= r_hf:
            print(
                f"vLLM {dtype} {workload}: never pays back its {r.startup:.0f} s start-up ({r_vllm:.0f} vs {r_hf:.0f} tok/s)"
            )
            continue
        # Same finish time: startup + N / r_vllm = N / r_hf  ->  N = startup / (1 / r_hf - 1 / r_vllm)
        break_even = r.startup / (1 / r_hf - 1 / r_vllm)
        print(
            f"vLLM {dtype} {workload}: {r_vllm / r_hf:.1f}x the batched transformers rate (wall); its {r.startup:.0f} s "
            f"start-up pays back after ~{break_even:,.0f} generated tokens"
        )


if __name__ == "__main__":
    main()
