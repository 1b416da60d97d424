"""Losses of the RL stages: the clipped PPO surrogate, the clipped value loss, entropy, and the soft-label
Bradley-Terry loss of the reward model.

Each PPO loss returns its loss with detached statistics (style guide 4); all means are over valid tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlaif.rl.advantages import masked_mean
from rlaif.rl.types import PolicyLoss, ValueLoss


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> PolicyLoss:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise. All inputs (B, R).

    ratio    = exp(logprobs - old_logprobs)
    pg_loss1 = -A * ratio
    pg_loss2 = -A * clip(ratio, 1 - eps, 1 + eps)
    loss     = mean(max(pg_loss1, pg_loss2))
    """
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).float(), mask)
        approxkl = 0.5 * masked_mean(logratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return PolicyLoss(loss, clipfrac, approxkl, mean_ratio)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> ValueLoss:
    """Value loss with the prediction clipped to old_values +- cliprange_value. All inputs (B, R).

    v_clipped = old_values + clip(values - old_values, -eps_v, eps_v)
    loss      = 0.5 * mean(max((values - returns)^2, (v_clipped - returns)^2))
    """
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses1 = (values - returns) ** 2
    vf_losses2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)
    return ValueLoss(loss, clipfrac)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) per position: logsumexp(z) - sum(p * z). (..., V) -> (...)."""
    logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def bradley_terry_loss(margin: torch.Tensor, p_chosen: torch.Tensor) -> torch.Tensor:
    """Soft-label Bradley-Terry loss, mean over pairs.

    margin = r_chosen - r_rejected, shape (N,); p_chosen = P(chosen is better), shape (N,), a soft AI label.

        loss = -[p * log sigma(margin) + (1 - p) * log sigma(-margin)]

    With p = 1 this is the usual -log sigma(r_chosen - r_rejected). It is the cross-entropy between the label
    and the model's preference probability sigma(margin), so it is minimised at margin = logit(p), not at +inf.
    """
    if margin.shape != p_chosen.shape:
        raise ValueError(
            f"bradley_terry_loss: margin shape {tuple(margin.shape)} != label shape {tuple(p_chosen.shape)}"
        )
    p_chosen = p_chosen.to(margin.dtype)
    return -(p_chosen * F.logsigmoid(margin) + (1.0 - p_chosen) * F.logsigmoid(-margin)).mean()
