"""Pure functions of the RL stages (no models loaded, no files written): sequences, advantages, KL, losses.

The PPO stage (rlaif/stages/ppo.py) and the reward-model stage compose these; none of them is a class to
subclass (style guide 2).
"""

from rlaif.rl.advantages import gae, gae_reference, masked_mean, masked_var, masked_whiten
from rlaif.rl.kl import AdaptiveKLController, FixedKLController, kl_per_token, make_kl_controller
from rlaif.rl.losses import bradley_terry_loss, clipped_value_loss, entropy_from_logits, ppo_policy_loss
from rlaif.rl.sequences import (
    first_true_indices,
    forward_logits,
    logprobs_from_logits,
    position_ids_from_mask,
    sample_responses,
    truncate_at_stop_token,
)
from rlaif.rl.types import PolicyLoss, PPOStats, Rollout, ValueLoss

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "PPOStats",
    "PolicyLoss",
    "Rollout",
    "ValueLoss",
    "bradley_terry_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "first_true_indices",
    "forward_logits",
    "gae",
    "gae_reference",
    "kl_per_token",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "position_ids_from_mask",
    "ppo_policy_loss",
    "sample_responses",
    "truncate_at_stop_token",
]
