"""Judge throughput on the embedded model: naive one-prompt-at-a-time fp32 scoring vs our batched judge.

Workload: the first `--pairs` human-labelled pairs of the shared dev set, judged in both orders under one principle
each (harmless constitution, one few-shot example: the stage defaults). Every variant runs the real code path
(`rlaif.judging.judge.judge_comparisons`) except the baseline, which is what a first version does: for each pair and
order, the whole prompt through `model(input_ids).logits` (fp32, batch 1), log-softmax at the last position. The
baseline costs the same per pair whatever the workload size, so it runs on the first `--naive-pairs` only.

Levers measured one at a time: length-sorted right-padded batches, shared prefixes (system prompt + few-shot turns
run once per principle group, and the conversation + question once per pair for both orders, reused as KV cache),
bf16. With `--principles N` the pairs are judged under N principles only, so each principle group is larger and its
prefix is shared by more prompts.

Fidelity (on the baseline's pairs): the largest |P(A) - P(A) of the baseline| over their prompts, and the share of
those pairs whose both-order label falls on the same side of 1/2 as the baseline's. Ceiling: judge prompt tokens/s
x 2 x parameters, as a fraction of a dense matmul rate measured here (the model's own MLP shape), per dtype.

    python bench/bench_judge.py --pairs 48 --naive-pairs 12   # appends/updates the "Judge" section of bench/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from rlaif.config import JudgeConfig
from rlaif.constitution import Constitution, load_constitution
from rlaif.judging.judge import JudgeRequest, build_sequences, judge_comparisons, principles_for
from rlaif.judging.prompts import option_token_ids
from rlaif.judging.scoring import common_prefix_length
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.records import Comparison
from rlaif.settings import settings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DATA = Path(os.environ.get("RLAIF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODEL = "smollm2-135m-instruct"
README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- bench_judge:start -->", "<!-- bench_judge:end -->"


def load_comparisons(count: int) -> list[Comparison]:
    lines = (DATA / "preference_pairs.dev.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    rows = [json.loads(line) for line in lines]
    return [Comparison(id=r["id"], prompt=r["prompt"], response_a=r["chosen"], response_b=r["rejected"]) for r in rows]


def matmul_gflops(dtype: torch.dtype, hidden: int, intermediate: int, rows: int = 512, repeats: int = 20) -> float:
    """Dense matmul rate of this machine on the model's MLP shape (rows x hidden) @ (hidden x intermediate)."""
    a = torch.randn(rows, hidden, dtype=dtype)
    b = torch.randn(hidden, intermediate, dtype=dtype)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    seconds = time.perf_counter() - started
    return 2 * rows * hidden * intermediate * repeats / seconds / 1e9


class Clock:
    """Wall and CPU seconds of a block (CPU time is steadier than wall time when other jobs share the cores)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def naive(
    model: torch.nn.Module, sequences: list[list[int]], option_ids: tuple[int, int]
) -> tuple[torch.Tensor, Clock]:
    """P(A) over the two options for every prompt, one full forward pass each; and the time it took."""
    p_a = []
    with Clock() as clock:
        for sequence in sequences:
            with torch.no_grad():
                logprobs = model(torch.tensor([sequence])).logits[0, -1].float().log_softmax(-1)
            p_a.append(torch.sigmoid(logprobs[option_ids[0]] - logprobs[option_ids[1]]).item())
    return torch.tensor(p_a), clock


def run_variant(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    comparisons: list[Comparison],
    constitution: Constitution,
    selectors: list[str] | None,
    cfg: JudgeConfig,
) -> tuple[torch.Tensor, torch.Tensor, Clock]:
    """(P(A) of every prompt in (pair, order) row order, both-order labels, time) through judge_comparisons."""
    with Clock() as clock:
        labels = list(
            judge_comparisons(comparisons, model, tokenizer, constitution, selectors, cfg, seed=0, progress=False)
        )
    rows = []
    for label in labels:
        judgement = label.judgements[0]
        rows += [judgement.p_a, 1 - judgement.p_a_swapped]
    return torch.tensor(rows), torch.tensor([label.p_a for label in labels]), clock


def write_readme_section(text: str) -> None:
    """Replace our marked block in bench/README.md, or append it; other sections are left as they are."""
    block = f"{START}\n{text.strip()}\n{END}\n"
    current = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    if START in current and END in current:
        updated = re.sub(re.escape(START) + r".*?" + re.escape(END) + r"\n?", lambda _: block, current, flags=re.S)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    README.write_text(updated, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48, help="Labelled pairs judged (x2 orders) by the batched judge.")
    parser.add_argument("--naive-pairs", type=int, default=12, help="Pairs for the slow one-at-a-time baseline.")
    parser.add_argument("--batch-size", type=int, default=8, help="Judge prompts per forward pass.")
    parser.add_argument("--principles", type=int, default=0, help="Judge under only the first N principles (0 = all).")
    parser.add_argument("--no-readme", action="store_true", help="Print only; do not touch bench/README.md.")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]

    constitution = load_constitution(settings.constitutions_dir / "harmless.yaml")
    selectors = [p.id for p in constitution.principles[: args.principles]] if args.principles else None
    comparisons = load_comparisons(args.pairs)
    tokenizer = load_tokenizer(MODEL)
    fp32 = load_causal_lm(MODEL, dtype="float32")
    bf16 = load_causal_lm(MODEL, dtype="bfloat16")
    params = sum(p.numel() for p in fp32.parameters())
    base = JudgeConfig(principles=selectors, batch_size=args.batch_size)

    # The exact prompts the judge scores (same principle per pair as judge_comparisons draws), for the baseline.
    selected = constitution.select(selectors)
    requests = [
        JudgeRequest(c.id, c.prompt, c.response_a, c.response_b, principles_for(c.id, selected, 1, 0)[0])
        for c in comparisons
    ]
    sequences = build_sequences(tokenizer, requests, examples=constitution.comparison_examples[: base.few_shot])
    tokens = sum(len(s) for s in sequences)
    option_ids = option_token_ids(tokenizer)
    n_naive = min(args.naive_pairs, len(comparisons))

    naive(fp32, sequences[:2], option_ids)  # warm-up
    reference, naive_clock = naive(fp32, sequences[: 2 * n_naive], option_ids)
    reference_label = (reference[0::2] + 1 - reference[1::2]) / 2
    naive_rate, naive_cpu_rate = n_naive / naive_clock.wall, n_naive / naive_clock.cpu
    naive_tokens = sum(len(s) for s in sequences[: 2 * n_naive])

    variants = [
        ("fp32, batched, length-sorted", fp32, base.model_copy(update={"share_prefix": False})),
        ("fp32, batched + shared prefixes", fp32, base),
        ("bf16, batched, length-sorted", bf16, base.model_copy(update={"share_prefix": False})),
        ("bf16, batched + shared prefixes", bf16, base),
    ]
    hidden, intermediate = fp32.config.hidden_size, fp32.config.intermediate_size
    rates = {
        "fp32": matmul_gflops(torch.float32, hidden, intermediate),
        "bf16": matmul_gflops(torch.bfloat16, hidden, intermediate),
    }

    def ceiling(token_count: int, seconds: float, dtype: str) -> float:
        return token_count / seconds * 2 * params / 1e9 / rates[dtype]

    rows = [
        (
            "naive: fp32, one prompt at a time, full logits",
            naive_rate,
            1.0,
            naive_cpu_rate,
            1.0,
            0.0,
            1.0,
            ceiling(naive_tokens, naive_clock.wall, "fp32"),
        )
    ]
    for name, model, cfg in variants:
        run_variant(model, tokenizer, comparisons[:2], constitution, selectors, cfg)  # warm-up
        p_a, labels, clock = run_variant(model, tokenizer, comparisons, constitution, selectors, cfg)
        same_side = ((labels[:n_naive] - 0.5) * (reference_label - 0.5) > 0).float().mean().item()
        max_diff = (p_a[: 2 * n_naive] - reference).abs().max().item()
        rate, cpu_rate = len(comparisons) / clock.wall, len(comparisons) / clock.cpu
        dtype = "bf16" if model is bf16 else "fp32"
        speedups = (rate / naive_rate, cpu_rate, cpu_rate / naive_cpu_rate)
        rows.append((name, rate, *speedups, max_diff, same_side, ceiling(tokens, clock.wall, dtype)))

    # Structural shares: the part fixed by the principle (system prompt + few-shot turns + the opening of the
    # question turn, measured against a dummy pair) and the part both orders of a pair share beyond it.
    examples = constitution.comparison_examples[: base.few_shot]
    probe = {
        p.id: build_sequences(tokenizer, [JudgeRequest("probe", "?", "?", "?", p)], examples=examples)[0]
        for p in selected
    }
    group_of = [r.principle.id for r in requests for _ in range(2)]
    fixed = [common_prefix_length([sequence, probe[key]]) for key, sequence in zip(group_of, sequences, strict=True)]
    group_share = sum(fixed) / tokens
    pair_tokens = sum(
        common_prefix_length([sequences[i], sequences[i + 1]]) - fixed[i] for i in range(0, len(sequences), 2)
    )
    pair_share = 2 * pair_tokens / tokens  # present in both orders' prompts
    members = set(group_of)
    groups = len(members)
    mean_margin = (reference_label - 0.5).abs().mean().item()
    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    principle_note = f"the first {args.principles}" if args.principles else f"all {len(constitution.principles)}"
    lines = [
        "## Judge",
        "",
        f"`python bench/bench_judge.py --pairs {args.pairs} --naive-pairs {n_naive} --batch-size {args.batch_size}"
        + (f" --principles {args.principles}" if args.principles else "")
        + f"`: {MODEL} ({params / 1e6:.1f} M parameters), {args.pairs} labelled dev pairs x 2 orders = {len(sequences)} "
        f"judge prompts ({tokens} tokens, mean {tokens / len(sequences):.0f}), one principle per pair drawn from "
        f"{principle_note} principles of `harmless.yaml`, 1 few-shot example; the baseline runs on the first "
        f"{n_naive} pairs. {threads} CPU threads, load average {load_start:.1f} at the start and {load:.1f} at the end "
        f"(the machine was shared with other jobs: wall-clock rows are only comparable when the load stayed the "
        f"same; the per-CPU-second columns are the steadier figures). Matmul rate measured here on a "
        f"(512 x {hidden}) @ ({hidden} x {intermediate}) product: fp32 {rates['fp32']:.0f} GFLOP/s, "
        f"bf16 {rates['bf16']:.0f} GFLOP/s.",
        "",
        "| variant | pairs/s | speed-up | pairs/CPU-s | speed-up per CPU-s | max abs dP(A) vs naive "
        "| label side = naive | of matmul ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rate, speedup, cpu_rate, cpu_speedup, diff, same_side, frac in rows:
        lines.append(
            f"| {name} | {rate:.2f} | {speedup:.2f}x | {cpu_rate:.2f} | {cpu_speedup:.2f}x | {diff:.1e} "
            f"| {same_side:.0%} | {frac:.0%} |"
        )
    lines += [
        "",
        "Ceiling = prompt tokens/s x 2 x parameters / matmul rate of the same dtype. The batched judge sends only the "
        "answer position through the LM head and runs each shared prefix once, so it does less than 2 x parameters "
        "FLOPs per prompt token: its fraction is an *effective* one and can pass 100 %.",
        "",
        f"Where the shared prefixes come from: the principle group's prefix (system prompt + few-shot turns) is "
        f"{group_share:.0%} of a judge prompt's tokens and the pair's part common to both orders (conversation + "
        f"question) another {pair_share:.0%}; each runs once per group or pair instead of once per prompt, so the "
        f"saving grows with the number of pairs per principle group (here {len(comparisons) / groups:.1f}).",
        f"bf16 rounding moves P(A) by up to {rows[-1][5]:.2f}, while this judge's labels sit within "
        f"{mean_margin:.3f} (mean |label - 1/2|) of 1/2: bf16 puts {1 - rows[-1][6]:.0%} of the labels on the "
        "other side of 1/2 from fp32. That is why `judge.dtype` defaults to float32; bf16 suits a judge whose margins "
        "are well above its rounding error (check with `rlaif judge-eval --dtype bfloat16`).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_readme:
        write_readme_section(text)
        print(f"\nupdated {README}")


if __name__ == "__main__":
    main()
