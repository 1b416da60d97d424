"""KL estimators on known distributions and the KL controllers' update arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.rl.kl import AdaptiveKLController, FixedKLController, kl_per_token, make_kl_controller


def test_k1_and_k3_on_one_token() -> None:
    # pi(x) = 0.5, pi_ref(x) = 0.25: k1 = ln 0.5 - ln 0.25 = ln 2 = 0.693147.
    # r = pi_ref / pi = 0.5: k3 = (r - 1) - ln r = -0.5 + 0.693147 = 0.193147.
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(math.log(2) - 0.5)


def test_estimators_are_unbiased_on_a_known_distribution() -> None:
    # pi = [0.5, 0.5], pi_ref = [0.25, 0.75]:
    # KL(pi || pi_ref) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.346574 - 0.202733 = 0.143841.
    # Weighting each token's estimate by pi(x) gives the exact expectation:
    #   E[k1] = sum pi ln(pi / pi_ref) = KL
    #   E[k3] = sum pi (pi_ref/pi - 1) + KL = (sum pi_ref - 1) + KL = KL
    pi, ref = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    true_kl = 0.143841
    for estimator in ("k1", "k3"):
        expectation = (pi * kl_per_token(pi.log(), ref.log(), estimator)).sum().item()
        assert expectation == pytest.approx(true_kl, rel=1e-5), estimator


def test_k3_is_never_negative_while_k1_can_be() -> None:
    # pi(x) = 0.25 < pi_ref(x) = 0.75: k1 = ln(1/3) = -1.098612 < 0; k3 = (3 - 1) - ln 3 = 0.901388 >= 0.
    logp, ref = torch.tensor([[math.log(0.25)]]), torch.tensor([[math.log(0.75)]])
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(-math.log(3))
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(2 - math.log(3))
    random_logp = torch.log_softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    random_ref = torch.log_softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert kl_per_token(random_logp, random_ref, "k3").min().item() >= 0.0


def test_unknown_estimator_is_an_error() -> None:
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k2")  # type: ignore[arg-type]


def test_adaptive_controller_update_arithmetic() -> None:
    controller = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    # KL 9 over target 6: error = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2;
    # beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512.
    assert controller.update(9.0, 256) == pytest.approx(0.100512)
    # KL 5.4: error = 5.4/6 - 1 = -0.1 (inside the clip); beta = 0.100512 * (1 - 0.1 * 256 / 10000)
    # = 0.100512 * 0.99744 = 0.1002547.
    assert controller.update(5.4, 256) == pytest.approx(0.100512 * 0.99744)
    # On target: error 0, beta unchanged.
    before = controller.value
    assert controller.update(6.0, 256) == pytest.approx(before)


def test_fixed_controller_and_state_round_trip() -> None:
    fixed = FixedKLController(value=0.05)
    assert fixed.update(100.0, 64) == 0.05
    adaptive = make_kl_controller(0.2, adaptive=True, target=1.0, horizon=100)
    adaptive.update(0.0, 10)  # error -0.2: 0.2 * (1 - 0.2 * 10 / 100) = 0.196
    assert adaptive.value == pytest.approx(0.196)
    restored = make_kl_controller(0.2, adaptive=True, target=1.0, horizon=100)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value
    assert isinstance(make_kl_controller(0.2, adaptive=False, target=1.0, horizon=100), FixedKLController)
