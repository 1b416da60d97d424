"""Model registry: the GGUF -> safetensors cache is built once, atomically, even when processes race."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.modeling import MARKER, ModelError, list_models, prepare_model, resolve_model

PREPARE = (
    "import logging; logging.basicConfig(level=logging.INFO); "
    "from rlaif.modeling import prepare_model; print(prepare_model('smollm2-135m-instruct'))"
)


@pytest.mark.slow
def test_two_processes_racing_on_an_empty_cache_leave_one_valid_cache(tmp_path: Path) -> None:
    env = {**os.environ, "RLAIF_MODEL_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PREPARE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert paths == {str(tmp_path / "smollm2-135m-instruct")}
    # Exactly one model folder, no temporary leftovers, and a marker listing the files that exist.
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["smollm2-135m-instruct"]
    marker = json.loads((tmp_path / "smollm2-135m-instruct" / MARKER).read_text())
    assert "model.safetensors" in marker["files"]
    # Only one of the two converted: the other found the finished cache after waiting for the lock.
    converted = sum("converting smollm2-135m-instruct" in err for _, err in outputs)
    assert converted == 1


def test_cached_model_loads_with_plain_transformers(embedded_model: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = prepare_model(embedded_model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 30
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template


def test_broken_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> None:
    # The tiny model builds from the cached tokenizer, so point the cache at a copy that has it.
    import shutil

    shutil.copytree(prepare_model("smollm2-135m-instruct"), tmp_path / "smollm2-135m-instruct")
    monkeypatch.setenv("RLAIF_MODEL_CACHE", str(tmp_path))
    from rlaif import settings as settings_module

    monkeypatch.setattr(settings_module, "settings", settings_module.Settings())
    broken = tmp_path / "tiny-random-llama"
    broken.mkdir()
    (broken / "config.json").write_text("{")  # half-written, no marker
    path = prepare_model("tiny-random-llama")
    assert (path / MARKER).exists()
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 2


def test_unknown_model_and_bad_folder_name_the_remedy(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE=1"):
        resolve_model("someone/not-a-local-model")
    with pytest.raises(ModelError, match="has no config.json"):
        prepare_model(str(tmp_path))


REPO = Path(__file__).resolve().parent.parent


def hubish_folder(cwd: Path) -> None:
    """A folder `probe/hubish` with a config.json under `cwd`: shaped like the hub id 'probe/hubish'."""
    folder = cwd / "probe" / "hubish"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')


def test_a_hub_id_is_looked_up_on_the_hub_never_in_the_working_directory(tmp_path: Path) -> None:
    """A worker started in a folder holding `probe/hubish` loaded it for the hub id 'probe/hubish' (outside
    RLAIF_MODEL_ROOTS). With the hub on, the id goes to the hub only: unreachable here, so a hub error."""
    hubish_folder(tmp_path)
    code = "from rlaif.modeling import resolve_model; print(resolve_model('probe/hubish'))"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),  # (no cached snapshot of anything)
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert "ModelError: cannot fetch model 'probe/hubish' from the Hugging Face hub" in result.stderr, result.stderr


def test_only_absolute_paths_name_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hubish_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="is a hub id, and the hub is off"):
        resolve_model("probe/hubish")
    for relative in ("./probe/hubish", "probe/hubish/.", "probe"):
        with pytest.raises(ModelError, match="unknown model"):
            resolve_model(relative)
    assert resolve_model(str(tmp_path / "probe" / "hubish")) == str(tmp_path / "probe" / "hubish")
    with pytest.raises(ModelError, match="no model folder"):
        resolve_model(str(tmp_path / "elsewhere"))


def test_list_models_reports_registry() -> None:
    names = {row["name"] for row in list_models()}
    assert {"smollm2-135m-instruct", "tiny-random-llama"} <= names
