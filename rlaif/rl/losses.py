"""Losses of the RL stages: the clipped PPO surrogate, the clipped value loss, entropy, the soft-label
Bradley-Terry loss of the reward model, and the soft-label DPO / IPO loss of the DPO stage.

Each PPO loss returns its loss with detached statistics (style guide 4); all means are over valid tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlaif.rl.advantages import masked_mean
from rlaif.rl.types import DPOLoss, PolicyLoss, ValueLoss


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


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    p_chosen: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> DPOLoss:
    """Soft-label DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023), mean over pairs. All inputs (N,).

    The log-probs are those of whole responses given the prompt, summed over the response tokens; p_chosen =
    P(chosen is better), the judge's soft label. With the token counts given (length normalisation), every
    log-prob of a response is divided by its count first: log pi(c|x) / |c| and log pi_ref(c|x) / |c|.

        delta = (log pi(c|x) - log pi_ref(c|x)) - (log pi(r|x) - log pi_ref(r|x))
        p     = clamp(p_chosen, label_smoothing, 1 - label_smoothing)
        sigmoid: loss = -[p log sigma(beta delta) + (1 - p) log sigma(-beta delta)]
        ipo:     loss = (delta - (2p - 1) / (2 beta))^2

    With p = 1 the sigmoid loss is the paper's -log sigma(beta delta) and IPO's target is 1 / (2 beta). Like the
    soft Bradley-Terry loss, the sigmoid loss is a cross-entropy minimised at beta delta = logit(p), so p = 0.5
    has zero gradient at delta = 0; both losses are unchanged when chosen and rejected swap and p becomes 1 - p.
    The implicit rewards beta * (log pi - log pi_ref) of both sides come back detached, for the metrics.
    """
    shapes = {
        tuple(t.shape)
        for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, p_chosen)
    }
    if len(shapes) != 1:
        raise ValueError(f"dpo_loss: log-probs and labels must have one shape, got {sorted(shapes)}")
    if (chosen_tokens is None) != (rejected_tokens is None):
        raise ValueError("dpo_loss: length normalisation needs the token counts of both sides")
    if chosen_tokens is not None and rejected_tokens is not None:  # length-normalised: mean log-prob per token
        policy_chosen_logps, ref_chosen_logps = policy_chosen_logps / chosen_tokens, ref_chosen_logps / chosen_tokens
        policy_rejected_logps = policy_rejected_logps / rejected_tokens
        ref_rejected_logps = ref_rejected_logps / rejected_tokens
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    delta = chosen_logratio - rejected_logratio
    p = p_chosen.to(delta.dtype).clamp(label_smoothing, 1.0 - label_smoothing)
    if loss_type == "sigmoid":
        losses = -(p * F.logsigmoid(beta * delta) + (1.0 - p) * F.logsigmoid(-beta * delta))
    elif loss_type == "ipo":
        losses = (delta - (2.0 * p - 1.0) / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r} (sigmoid or ipo)")
    return DPOLoss(losses.mean(), (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach())
