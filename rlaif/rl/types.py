"""Typed tuples for the tensors in flight during PPO (style guide 4).

Shape tags: B = rollout batch (prompts x samples), Q = query (prompt) tokens, left-padded, R = response tokens
(at most `ppo.response_length`; everything after the first EOS is padding), E = PPO epochs, M = minibatches.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Rollout(NamedTuple):
    """One batch of rolled-out episodes, everything PPO needs to train on it.

    query_responses: (B, Q + R) token ids, query left-padded, response truncated at the stop token.
    attention_mask:  (B, Q + R) 1 for real query tokens and every response position (padding after EOS is
                     only ever read by positions that the response mask drops).
    logprobs:        (B, R) log pi_old(token) at the rollout temperature.
    ref_logprobs:    (B, R) log pi_ref(token) of the frozen SFT reference, same temperature.
    values:          (B, R) V_old before each response token; 0 after the end.
    rewards:         (B, R) -beta * KL per token, plus the score on the last token.
    advantages:      (B, R) GAE advantages, whitened over the valid tokens.
    returns:         (B, R) advantages + values before whitening: the value targets.
    response_mask:   (B, R) True up to and including the stop token.
    scores:          (B,) score_fn output, before the missing-EOS penalty.
    contains_eos:    (B,) bool, the response ended with the stop token (else it hit the length limit).
    kl:              (B, R) per-token KL estimate (k1 or k3) used in the reward; 0 after the end.
    sampler_logprobs: (B, R) log-probs the rollout engine reported (ppo.rollout_backend = vllm), for the
                     val/sampler_logprob_gap metric only; None when the training policy sampled.
    """

    query_responses: torch.Tensor
    attention_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    response_mask: torch.Tensor
    scores: torch.Tensor
    contains_eos: torch.Tensor
    kl: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

    @property
    def context_length(self) -> int:
        """Q: where the responses start in `query_responses`."""
        return self.query_responses.shape[1] - self.logprobs.shape[1]


class PolicyLoss(NamedTuple):
    """Clipped PPO surrogate: the loss (with grad) and detached statistics (scalars)."""

    loss: torch.Tensor
    clipfrac: torch.Tensor  # fraction of tokens whose clipped objective was the active one
    approxkl: torch.Tensor  # 0.5 * mean(logratio^2), an estimate of KL(pi_old || pi)
    ratio: torch.Tensor  # mean pi / pi_old over valid tokens


class ValueLoss(NamedTuple):
    """Clipped value loss: the loss (with grad) and the detached fraction of clipped tokens."""

    loss: torch.Tensor
    clipfrac: torch.Tensor


class PPOStats(NamedTuple):
    """Per-minibatch statistics of one PPO update; every field is (E, M), filled in as the epochs run.

    Epochs skipped by the approx-KL early stop stay NaN and are left out of the means (`torch.nanmean`).
    """

    approxkl: torch.Tensor
    clipfrac: torch.Tensor
    pg_loss: torch.Tensor
    vf_loss: torch.Tensor
    vf_clipfrac: torch.Tensor
    entropy: torch.Tensor
    ratio: torch.Tensor
    ptx_loss: torch.Tensor

    @classmethod
    def empty(cls, epochs: int, minibatches: int) -> PPOStats:
        return cls(*(torch.full((epochs, minibatches), float("nan")) for _ in cls._fields))


class DPOLoss(NamedTuple):
    """Soft-label DPO / IPO: the mean loss over pairs (with grad) and the detached implicit rewards, each (N,)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor  # beta * (log pi(chosen) - log pi_ref(chosen))
    rejected_rewards: torch.Tensor  # beta * (log pi(rejected) - log pi_ref(rejected))
