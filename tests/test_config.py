"""RunConfig: defaults valid, unknown fields refused, derived sizes computed and checked with named fields."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from rlaif import config
from rlaif.config import (
    CONFIG_VERSION,
    RunConfig,
    exact_div,
    load_run_config,
    parse_dotted_overrides,
    stored_run_config,
    upgrade_config,
)


def test_defaults_are_valid_and_derive_sizes() -> None:
    cfg = RunConfig()
    # 8 prompts x 1 sample = batch 8; 8 / 2 minibatches = 4; 64 episodes / 8 = 8 updates.
    assert (cfg.ppo.batch_size, cfg.ppo.minibatch_size, cfg.ppo.num_updates) == (8, 4, 8)
    # Computed, never stored: a dump carries only what a user sets, so it validates again as it is.
    assert not {"batch_size", "minibatch_size", "num_updates"} & cfg.model_dump()["ppo"].keys()
    assert RunConfig.model_validate(cfg.model_dump()) == cfg


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
    with pytest.raises(ValidationError, match=r"ppo\.batch_size 48 is not divisible by ppo\.num_minibatches 5"):
        RunConfig.model_validate({"ppo": {"prompts_per_step": 16, "samples_per_prompt": 3, "num_minibatches": 5}})
    with pytest.raises(ValidationError, match=r"ppo\.minibatch_size 6 is not divisible by ppo\.micro_batch_size 4"):
        RunConfig.model_validate({"ppo": {"prompts_per_step": 12, "num_minibatches": 2, "total_episodes": 24}})
    with pytest.raises(ValidationError, match=r"ppo\.total_episodes 10 is not divisible by ppo\.batch_size 8"):
        RunConfig.model_validate({"ppo": {"total_episodes": 10}})
    assert exact_div(12, 4, "x", "y") == 3


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


def _leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    """(path, field) of every field that is not itself a config section."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _leaves(annotation, (*prefix, name))
        else:
            out.append(((*prefix, name), field))
    return out


def _nested(path: tuple[str, ...], value: object) -> dict[str, object]:
    out: dict[str, object] = {path[-1]: value}
    for part in reversed(path[:-1]):
        out = {part: out}
    return out


# float, float | None and tuple[float, float] fields (not the Literal["float32", ...] choices).
FLOAT_PATHS = [path for path, f in _leaves(RunConfig) if float in (f.annotation, *typing.get_args(f.annotation))]
COUNT_PATHS = [path for path, field in _leaves(RunConfig) if field.annotation is int]


def test_every_float_is_finite() -> None:
    """An infinity or NaN has no JSON form: stored as null, it made the run unreadable (issue 16). Every float field,
    however given (a JSON number too large for a double, the Infinity/NaN literals, a string), is refused."""
    assert ("ppo", "kl_coef") in FLOAT_PATHS and ("ppo", "cliprange") in FLOAT_PATHS and len(FLOAT_PATHS) > 30
    for path in FLOAT_PATHS:
        where = ".".join(path)
        for token in ("1e999", "-1e999", "Infinity", "-Infinity", "NaN", '"Infinity"', '"nan"'):
            value = f"[{token}, 0.6]" if path == ("judge", "cot_clamp") else token
            raw = json.dumps(_nested(path, "VALUE")).replace('"VALUE"', value)
            with pytest.raises(ValidationError, match="finite number") as caught:
                RunConfig().with_overrides(json.loads(raw))
            assert ".".join(str(p) for p in caught.value.errors()[0]["loc"]).startswith(where), (where, token)


def test_every_count_has_an_upper_bound() -> None:
    """A size that multiplies into a run that cannot finish (ppo.total_episodes = 10**12, sft.micro_batch_size =
    10**9) or into an overflow (seed = 2**64, torch.manual_seed) is refused by its field."""
    assert ("seed",) in COUNT_PATHS and ("ppo", "total_episodes") in COUNT_PATHS
    for path, field in _leaves(RunConfig):
        if path not in COUNT_PATHS:
            continue
        bounds = [m.le for m in field.metadata if isinstance(m, annotated_types.Le)]
        assert bounds, f"{'.'.join(path)} has no upper bound"
        with pytest.raises(ValidationError, match="less than or equal"):
            RunConfig.model_validate(_nested(path, bounds[0] + 1))
    assert RunConfig(seed=2**32 - 1).seed == 2**32 - 1
    for too_big in ({"seed": 2**64}, {"ppo": {"total_episodes": 10**12}}, {"sft": {"micro_batch_size": 10**9}}):
        with pytest.raises(ValidationError, match="less than or equal"):
            RunConfig.model_validate(too_big)


def test_stored_configs_are_upgraded_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 0 (no config_version: every config stored before versions) reads as the current version; a rename
    in a future version is one step in CONFIG_STEPS, applied in order; the input is never changed."""
    stored = {"seed": 3, "ppo": {"kl_coef": 0.2}}
    assert upgrade_config(stored) == {"seed": 3, "ppo": {"kl_coef": 0.2}, "config_version": CONFIG_VERSION}
    assert stored_run_config(json.dumps(stored)) == RunConfig(seed=3).with_overrides({"ppo": {"kl_coef": 0.2}})
    assert RunConfig().model_dump()["config_version"] == CONFIG_VERSION  # written with every stored config

    # A fake version {CONFIG_VERSION + 1} that renamed ppo.kl_coef to ppo.kl_beta, and one after it that moved seed
    # into a section.
    fake = CONFIG_VERSION + 1
    monkeypatch.setattr(config, "CONFIG_VERSION", fake)
    monkeypatch.setitem(config.CONFIG_STEPS, fake - 1, config.rename_field("ppo.kl_coef", "ppo.kl_beta"))
    monkeypatch.setitem(config.CONFIG_STEPS, fake, config.rename_field("seed", "rng.seed"))  # (never reached)
    assert upgrade_config(stored) == {"seed": 3, "ppo": {"kl_beta": 0.2}, "config_version": fake}
    assert upgrade_config({"config_version": fake - 1, "ppo": {"cliprange": 0.1}}) == {
        "config_version": fake,
        "ppo": {"cliprange": 0.1},
    }  # (a config without the renamed field passes the step unchanged)
    assert stored == {"seed": 3, "ppo": {"kl_coef": 0.2}}
    monkeypatch.setattr(config, "CONFIG_VERSION", fake + 1)
    assert upgrade_config(stored) == {"rng": {"seed": 3}, "ppo": {"kl_beta": 0.2}, "config_version": fake + 1}


def test_a_config_stored_with_the_derived_ppo_sizes_still_reads() -> None:
    """Versions 0 and 1 stored ppo.batch_size, minibatch_size and num_updates beside the fields they follow from
    (every run's config_json and inputs/config.json, every checkpoint's meta.json). Version 2 computes them: the
    step from version 1 drops the stored copies, so those runs still read, with the same sizes."""
    ppo = {"prompts_per_step": 4, "samples_per_prompt": 2, "num_minibatches": 2, "total_episodes": 32}
    derived = {"batch_size": 8, "minibatch_size": 4, "num_updates": 4}
    for version in ({}, {"config_version": 0}, {"config_version": 1}):
        stored = {**version, "seed": 5, "ppo": {**ppo, **derived}}
        with pytest.raises(ValidationError, match=r"ppo\.batch_size\n  Extra inputs are not permitted"):
            RunConfig.model_validate({**stored, "config_version": CONFIG_VERSION})  # (without the step)
        cfg = stored_run_config(json.dumps(stored))
        assert cfg == RunConfig(seed=5).with_overrides({"ppo": ppo})
        assert (cfg.ppo.batch_size, cfg.ppo.minibatch_size, cfg.ppo.num_updates) == (8, 4, 4)
        assert stored["ppo"] == {**ppo, **derived}  # (the stored dict is left as it was)
    assert config.CONFIG_STEPS[1]({"seed": 1}) == {"seed": 1}  # (a config without a ppo section passes)


def test_a_stored_config_keeps_its_backends_when_the_defaults_become_auto() -> None:
    """generation.backend and ppo.rollout_backend now default to auto. Every stored config is a full dump (the run
    row's config_json and inputs/config.json are `model_dump`s), so a run stored under the former defaults says
    `transformers` explicitly and keeps it: no version step is needed. Only a config that leaves the fields out (a
    new YAML file or POST body) gets auto."""
    dump = RunConfig().model_dump(mode="json")
    assert dump["generation"]["backend"] == "auto" and dump["ppo"]["rollout_backend"] == "auto"
    former = RunConfig().with_overrides(
        {"generation": {"backend": "transformers"}, "ppo": {"rollout_backend": "transformers"}}
    )
    stored = former.model_dump(mode="json")
    del stored["generation"]["vllm_break_even_tokens"]  # (stored before the field existed)
    for version in ({}, {"config_version": 0}, {"config_version": 1}, {"config_version": CONFIG_VERSION}):
        raw = {**{k: v for k, v in stored.items() if k != "config_version"}, **version}  # ({}: before versions)
        if version.get("config_version", 0) < 2:  # (versions 0 and 1 also stored the derived PPO sizes)
            raw["ppo"] = {**raw["ppo"], "batch_size": 64, "minibatch_size": 32, "num_updates": 1}
        cfg = stored_run_config(json.dumps(raw))
        assert (cfg.generation.backend, cfg.ppo.rollout_backend) == ("transformers", "transformers")
        assert cfg.generation.vllm_break_even_tokens == 2_500
    assert stored_run_config(json.dumps({"seed": 1})).ppo.rollout_backend == "auto"


def test_a_config_of_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="newer than this version of rlaif reads"):
        upgrade_config({"config_version": CONFIG_VERSION + 1})
    for bad in ("1", -1, True, 1.5):
        with pytest.raises(ValueError, match="is not a version"):
            upgrade_config({"config_version": bad})
    with pytest.raises(ValueError, match="JSON object"):
        stored_run_config("[1, 2]")
    with pytest.raises(ValidationError, match="config_version"):
        RunConfig.model_validate({"config_version": 0})  # a request or file never sets an old version
