"""The tiny random model, loaded once for the judge tests (float32, so the reference paths compare tightly)."""

from __future__ import annotations

from typing import Any

import pytest

from rlaif.constitution import Constitution, load_constitution
from rlaif.settings import settings


@pytest.fixture(scope="session")
def tiny_lm(tiny_model: str) -> tuple[Any, Any]:
    from rlaif.modeling import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model, dtype="float32")


@pytest.fixture(scope="session")
def minimal_constitution() -> Constitution:
    return load_constitution(settings.constitutions_dir / "minimal.yaml")
