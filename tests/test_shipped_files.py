"""Every shipped constitution and example config validates (style guide 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.config import load_run_config
from rlaif.constitution import load_constitution
from rlaif.prompts import load_prompts

ROOT = Path(__file__).resolve().parents[1]
CONSTITUTIONS = sorted((ROOT / "constitutions").glob("*.yaml"))
CONFIGS = sorted((ROOT / "examples").glob("*.yaml"))
PROMPT_FILES = sorted((ROOT / "examples").glob("*.jsonl"))


@pytest.mark.parametrize("path", CONSTITUTIONS, ids=lambda p: p.name)
def test_constitution_validates(path: Path) -> None:
    constitution = load_constitution(path)
    assert constitution.principles


def test_shipped_constitutions_are_complete() -> None:
    names = {p.stem for p in CONSTITUTIONS}
    assert {"harmless", "hhh", "minimal"} <= names
    harmless = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    # The paper's shape: at least 16 critique/revision principles and 16 comparison principles.
    assert len(harmless.principles) >= 16
    assert harmless.critique_examples and harmless.comparison_examples
    assert len(load_constitution(ROOT / "constitutions" / "minimal.yaml").principles) == 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    load_run_config(path)


@pytest.mark.parametrize("path", PROMPT_FILES, ids=lambda p: p.name)
def test_example_prompts_validate(path: Path) -> None:
    assert load_prompts(path)
