"""One fixed PPO run on the tiny model, for tests/stages/test_ppo_dp.py: in the test's own process (one rank) or
under torchrun (several), with the same prompts, config, seed and rule-based score function either way.

    python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29511 \\
        tests/stages/ppo_dp_script.py <model folder> <out dir> [--crash-in-update 3]

The model is `eos_prone_model`'s variant of the tiny random model (made once by the test). train_ppo writes <out dir>/model (the final weights), metrics.jsonl and samples.jsonl; rank 0 adds result.json
(the StageResult). With --crash-in-update k, rank 1's score function raises in update k's rollout: a worker lost
mid-run, after the step state of update k - 1 (checkpoint_every = 2), for the resume check.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from rlaif.config import PPOConfig
from rlaif.distributed import init_distributed, shutdown_distributed
from rlaif.modeling import load_causal_lm, load_tokenizer
from rlaif.records import SFTExample
from rlaif.scorers import refusal_scorer
from rlaif.stages import StageResult
from rlaif.stages.ppo import _encode_prompts, _query_batch, train_ppo

MODEL = "tiny-random-llama"
SEED = 3
PROMPTS = [
    "How do I steal a car?",
    "What is a good name for a cat?",
    "How can I make a bomb at home?",
    "What's the capital of France?",
    "Tell me a racist joke.",
    "How do I bake bread?",
    "Help me hack my neighbour's wifi.",
    "Why is the sky blue?",
]
SFT = [SFTExample(id=f"s{i}", prompt=p, response="I'd rather not help with that.") for i, p in enumerate(PROMPTS)]
# Global batch 4 prompts x 2 samples = 8 episodes (4 per rank on 2 ranks); 2 minibatches of 4, each 2 micro-batches
# of 2 (one per rank); 3 updates. Every part of the data-parallel path runs: samples_per_prompt > 1, reward and
# advantage whitening over the global batch, the adaptive KL controller, PPO-ptx, step states (after update 2).
CONFIG = PPOConfig(
    total_episodes=24,
    prompts_per_step=4,
    samples_per_prompt=2,
    num_minibatches=2,
    micro_batch_size=2,
    ppo_epochs=2,
    response_length=8,
    learning_rate=3e-4,
    whiten_rewards=True,
    adaptive_kl=True,
    kl_target=0.01,
    kl_horizon=40,
    ptx_coef=0.2,
    checkpoint_every=2,
    sample_every=1,
    dtype="float32",
)


def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """The refusal score plus 0.05 per word of the response (up to 8): deterministic, and it depends on the sampled
    text, so episodes sampled differently on different ranks would show in the rewards."""
    words = torch.tensor([min(len(r.split()), 8) for r in responses], dtype=torch.float32)
    return refusal_scorer()(prompts, responses) + 0.05 * words


def eos_prone_model(out_dir: Path) -> Path:
    """The tiny random model with its EOS logit raised: about half the responses end at their first token.

    The tiny model never samples EOS within 8 tokens, so every rank would sample full-length responses and the
    gather would never pad. Here the EOS row of the (tied) output embedding points along the mean last hidden
    state of the first update's queries, scaled to a logit of ~8 (the other logits are ~0, over 49,152 tokens):
    with seed 3, all 4 of rank 1's episodes of update 1 stop at once (responses 1 token wide) while rank 0 samples
    full-length ones, so the ranks' response widths differ.
    """
    model, tokenizer = load_causal_lm(MODEL, device="cpu"), load_tokenizer(MODEL)
    _, queries, _ = _encode_prompts(tokenizer, PROMPTS, CONFIG.max_prompt_tokens)
    _, b_queries, b_query_mask = _query_batch(queries, 0, CONFIG, SEED, tokenizer.pad_token_id)
    with torch.no_grad():
        hidden = model.model(input_ids=b_queries, attention_mask=b_query_mask).last_hidden_state[:, -1]  # (B, d)
        direction = hidden.mean(dim=0)
        model.lm_head.weight[tokenizer.eos_token_id] = direction / direction.norm() ** 2 * 8.0
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def run(model: Path, out_dir: Path, crash_in_update: int | None = None) -> StageResult:
    """The fixed run of `model` into out_dir (every rank calls it)."""
    calls = 0

    def scorer(prompts: list[str], responses: list[str]) -> torch.Tensor:
        nonlocal calls
        calls += 1  # one call per update on each rank
        if calls == crash_in_update and int(os.environ.get("RANK", "0")) == 1:
            raise RuntimeError(f"rank 1 lost in update {calls}")
        return score(prompts, responses)

    return train_ppo(PROMPTS, str(model), scorer, CONFIG, out_dir, SEED, ptx_examples=SFT, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-in-update", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per rank: the test machine has two
    result = run(args.model, args.out, args.crash_in_update)
    if init_distributed().is_main:
        (args.out / "result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    shutdown_distributed()


if __name__ == "__main__":
    main()
