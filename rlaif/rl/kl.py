"""Per-token KL estimates between the policy and the frozen reference, and the KL coefficient controllers.

Estimators (Schulman, "Approximating KL divergence", 2020), with r = pi_ref(x) / pi(x) for x ~ pi:
    k1 = log pi(x) - log pi_ref(x) = -log r       unbiased, high variance, can be negative per token
    k3 = (r - 1) - log r                          unbiased, low variance, never negative

Controllers: FixedKLController keeps beta; AdaptiveKLController moves beta so that the KL per sequence tracks
a target (Ziegler et al. 2019, sec. 2.2; lm-human-preferences `AdaptiveKLController`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch

KLEstimator = Literal["k1", "k3"]


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """KL(pi || pi_ref) estimate at each sampled token: (B, R), (B, R) -> (B, R)."""
    logr = ref_logprobs - logprobs
    if estimator == "k1":
        return -logr
    if estimator == "k3":
        return torch.expm1(logr) - logr
    raise ValueError(f"unknown KL estimator {estimator!r}: use 'k1' or 'k3'")


class KLController(Protocol):
    value: float

    def update(self, current_kl: float, n_steps: int) -> float: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


@dataclass
class FixedKLController:
    """beta stays at its initial value."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> float:
        """A fixed beta ignores the measured KL; returns beta."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Proportional controller on log beta (Ziegler et al. 2019):

        error = clip(current_kl / target - 1, -0.2, 0.2)
        beta <- beta * (1 + error * n_steps / horizon)

    current_kl is the mean KL per sequence (nats, summed over tokens); n_steps the episodes since the last update.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> float:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


def make_kl_controller(kl_coef: float, adaptive: bool, target: float, horizon: int) -> KLController:
    if adaptive:
        return AdaptiveKLController(value=kl_coef, target=target, horizon=horizon)
    return FixedKLController(value=kl_coef)
