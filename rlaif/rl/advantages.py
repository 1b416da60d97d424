"""Masked statistics, whitening and generalised advantage estimation (Schulman et al. 2016).

Variances are population variances (`unbiased=False`), as in OpenAI's lm-human-preferences: one of the
"N implementation details" (Huang et al. 2022, detail "Reward normalisation / whitening").
"""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is true (over everything, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of `values` where `mask` is true; population variance unless `unbiased`."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            raise ValueError(f"unbiased variance needs at least 2 masked-in values, got {int(count)}")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked-in entries; with shift_mean=False the mean is added back.

    Rewards are whitened with shift_mean=False (scaling only: a shifted reward would change what "good" means
    for the length of a response); advantages with shift_mean=True.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns by GAE, looping backwards over time and vectorised over the batch.

    rewards, values: (B, R). Entries after the end of a response must be 0 in both, so the last real token
    bootstraps from V = 0 (an episode ends at the stop token).

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V
    """
    length = rewards.shape[1]
    lastgaelam = torch.zeros_like(rewards[:, 0])
    advantages_reversed = []
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, R)
    return advantages, advantages + values


def gae_reference(
    rewards: list[list[float]], values: list[list[float]], gamma: float, lam: float
) -> tuple[list[list[float]], list[list[float]]]:
    """The same estimate with plain Python loops over each episode: the specification `gae` is tested against."""
    advantages, returns = [], []
    for episode_rewards, episode_values in zip(rewards, values, strict=True):
        length = len(episode_rewards)
        episode_advantages = [0.0] * length
        running = 0.0
        for t in range(length - 1, -1, -1):
            next_value = episode_values[t + 1] if t + 1 < length else 0.0
            delta = episode_rewards[t] + gamma * next_value - episode_values[t]
            running = delta + gamma * lam * running
            episode_advantages[t] = running
        advantages.append(episode_advantages)
        returns.append([a + v for a, v in zip(episode_advantages, episode_values, strict=True)])
    return advantages, returns
