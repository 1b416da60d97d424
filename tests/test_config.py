"""RunConfig: defaults valid, unknown fields refused, derived sizes computed and checked with named fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlaif.config import RunConfig, exact_div, load_run_config, parse_dotted_overrides


def test_defaults_are_valid_and_derive_sizes() -> None:
    cfg = RunConfig()
    # 8 prompts x 1 sample = batch 8; 8 / 2 minibatches = 4; 64 episodes / 8 = 8 updates.
    assert (cfg.ppo.batch_size, cfg.ppo.minibatch_size, cfg.ppo.num_updates) == (8, 4, 8)


def test_every_field_has_a_description() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                missing += walk(annotation)
        return missing

    assert walk(RunConfig) == []


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"ppo\.klcoef"):
        RunConfig.model_validate({"ppo": {"klcoef": 0.1}})
    with pytest.raises(ValidationError):
        RunConfig.model_validate({"generation": {"backend": "my.module.Engine"}})  # closed choices only


def test_divisibility_error_names_the_fields() -> None:
    with pytest.raises(ValidationError, match=r"ppo.batch_size 6 .* / ppo.num_minibatches: 6 is not divisible by 4"):
        RunConfig.model_validate({"ppo": {"prompts_per_step": 6, "num_minibatches": 4}})
    with pytest.raises(ValidationError, match=r"ppo\.total_episodes"):
        RunConfig.model_validate({"ppo": {"total_episodes": 10}})
    assert exact_div(12, 4, "x") == 3


def test_overrides_revalidate_and_recompute_derived() -> None:
    cfg = RunConfig().with_overrides({"ppo": {"prompts_per_step": 4, "total_episodes": 16}, "seed": 7})
    assert (cfg.seed, cfg.ppo.batch_size, cfg.ppo.num_updates) == (7, 4, 4)
    assert cfg.critique.rounds == 2  # untouched sections keep their defaults


def test_dotted_overrides_and_yaml_file(tmp_path: Path) -> None:
    assert parse_dotted_overrides(["ppo.kl_coef=0.1", "seed=3", "judge.model=x"]) == {
        "ppo": {"kl_coef": 0.1},
        "seed": 3,
        "judge": {"model": "x"},
    }
    with pytest.raises(ValueError, match=r"expected key\.path=value"):
        parse_dotted_overrides(["ppo.kl_coef"])
    path = tmp_path / "run.yaml"
    path.write_text("critique:\n  rounds: 3\n")
    cfg = load_run_config(path, ["critique.rounds=4"])
    assert cfg.critique.rounds == 4


def test_config_round_trips_through_json() -> None:
    cfg = RunConfig().with_overrides({"ppo": {"kl_coef": 0.2}})
    assert RunConfig.model_validate_json(cfg.model_dump_json()) == cfg
