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


# ---------------------------------------------------------------- the packaged evaluation and development sets

DATA = ROOT / "rlaif" / "data"


def test_packaged_data_matches_its_manifest_and_carries_its_licences() -> None:
    import hashlib
    import json

    manifest = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
    for name, entry in manifest["files"].items():
        data = (DATA / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), name
    for name, licence in manifest["licences"].items():
        assert (DATA / licence).is_file(), f"{name} ships without its licence {licence}"
    assert (DATA / "README.md").is_file()
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    assert total < 5_000_000, f"the packaged data is {total / 1e6:.1f} MB: keep it small"


def test_named_sets_resolve_to_the_packaged_data_by_default() -> None:
    from rlaif.evaluation.datasets import HUMAN_PAIRS_FILE, SET_FILES, load_human_pairs, load_named_set
    from rlaif.settings import Settings

    assert Settings().data_dir == DATA
    for name, stem in SET_FILES.items():
        assert (DATA / f"{stem}.dev.jsonl").is_file(), name
        assert len(load_named_set(name, Settings().data_dir, "dev", 4, seed=0)) == 4
    assert (DATA / f"{HUMAN_PAIRS_FILE}.dev.jsonl").is_file()
    assert len(load_human_pairs(DATA / f"{HUMAN_PAIRS_FILE}.dev.jsonl", limit=5)) == 5


def test_nothing_in_the_repository_refers_to_a_folder_outside_it() -> None:
    """A user's clone has no development data beside it: only scripts/build_data.py may know where it lives."""
    import subprocess

    outside = ("../" + "shared", "/work/" + "shared", "/work/" + "main")  # split so this file does not match
    git = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if git.returncode == 0:
        listed = git.stdout.split()
    else:  # not a git checkout (an unpacked archive): every file but build outputs
        skip = {".git", ".venv", ".venv-vllm", "__pycache__", ".ruff_cache", ".pytest_cache"}
        listed = [
            str(path.relative_to(ROOT))
            for path in ROOT.rglob("*")
            if path.is_file() and not skip & set(path.relative_to(ROOT).parts) and ".egg-info" not in str(path)
        ]
    found = []
    for name in listed:
        path = ROOT / name
        if name == "scripts/build_data.py" or not path.is_file() or path.suffix in (".safetensors", ".gguf"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}: {needle}" for needle in outside if needle in text]
    assert not found, found
