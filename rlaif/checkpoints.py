"""Checkpoints: final Hugging Face folders with lineage, and resumable step states.

Two kinds, two jobs:

* `save_hf_checkpoint(model, tokenizer, folder, meta)` writes the *product* of a training stage: a folder that
  `AutoModelForCausalLM.from_pretrained` (or `AutoModelForSequenceClassification` for the reward model) loads
  as is and vLLM can serve (safetensors, config.json, tokenizer files, generation_config.json), plus
  `meta.json` (run config and lineage: base model, constitution name/sha256/principles, judge model, data
  counts, final metrics), a model card `README.md` that repeats the lineage, and `manifest.json` (SHA-256 of
  every file) written last. The folder is assembled under a temporary name and renamed into place, so a
  reader sees either no folder or a complete one. A peft (LoRA) model is saved twice: the adapter in
  `adapter/` and the merged full model at the top level, so consumers never need peft.

* `save_step_state(steps_dir, step, model, optimizer, scheduler, extra)` writes what resuming needs: weights,
  optimizer and scheduler state, the RNG states of python, numpy and torch, the step and any `extra`
  (metrics history, controller state), as `steps_dir/step-<N>/`, atomically, keeping the newest `keep`.
  `load_latest_step_state(steps_dir, model, optimizer, scheduler)` restores the newest one in place and
  returns its step (None when there is none); `read_step_extra(steps_dir, step)` returns its `extra`.
  Training loops make their data order a function of (seed, epoch), so a resumed run skips exactly the
  consumed batches and ends with the same weights as an uninterrupted one (tests/test_checkpoints.py).

  With `trainable_only=True` (LoRA) a step state holds only the parameters that train (adapter and heads): the
  frozen base is what loading the base model folder gives back, so it is not copied into every state.

`model` may be wrapped in DistributedDataParallel; the wrapper is removed before saving. Any `nn.Module`
works for step states (PPO can pass an `nn.ModuleDict` of policy and value model).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.store import MANIFEST, StoreError, atomic_write_json, atomic_write_text, write_manifest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from rlaif.config import RunConfig
    from rlaif.constitution import Constitution

log = logging.getLogger(__name__)

META_FILE = "meta.json"
CARD_FILE = "README.md"
ADAPTER_DIR = "adapter"
STEP_PREFIX = "step-"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_WEIGHTS = "model.safetensors"
_TRAINER_STATE = "trainer_state.pt"
_STEP_INFO = "step.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------------------------
# Final checkpoints
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_meta(
    stage: str,
    base_model: str,
    run_config: RunConfig | None = None,
    constitution: Constitution | dict[str, Any] | None = None,
    judge_model: str | None = None,
    counts: dict[str, int] | None = None,
    metrics: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The lineage record stored as meta.json: what was trained, from what, with which settings and data.

    `constitution` is a Constitution or its JSON form (as stored in the run's inputs); only its name, content
    hash and principle ids go into the meta, not the full text.
    """
    from rlaif.constitution import Constitution

    meta: dict[str, Any] = {"stage": stage, "base_model": base_model}
    if run_config is not None:
        meta["run_config"] = run_config.model_dump(mode="json")
        meta["seed"] = run_config.seed
        # The three roles of a run: who is aligned, who wrote the SL-CAI data, who judged (issue: teacher roles).
        meta["models"] = {
            "policy": run_config.policy_model,
            "feedback": run_config.feedback_model,
            "judge": run_config.judge_model,
        }
    if constitution is not None:
        parsed = constitution if isinstance(constitution, Constitution) else Constitution.model_validate(constitution)
        meta["constitution"] = {
            "name": parsed.name,
            "sha256": parsed.sha256,
            "principles": [principle.id for principle in parsed.principles],
        }
    if judge_model is not None:
        meta["judge_model"] = judge_model
    meta["counts"] = dict(counts or {})
    meta["metrics"] = {key: float(value) for key, value in (metrics or {}).items()}
    meta.update(extra)
    return meta


def model_card(meta: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) carrying the lineage in meta."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [rlaif, constitutional-ai]",
        "---",
        "",
        f"# rlaif {meta.get('stage', 'model')} checkpoint",
        "",
        "Trained by rlaif (Constitutional AI / RLAIF as a service; Bai et al. 2022, arXiv:2212.08073).",
        "",
        "## Lineage",
        "",
        f"- stage: `{meta.get('stage')}`",
        f"- base model: `{meta.get('base_model')}`",
    ]
    if "policy_optimization" in meta:
        lines.append(f"- policy optimization: `{meta['policy_optimization']}`")
    if "reference_model" in meta:
        lines.append(f"- reference model: `{meta['reference_model']}`")
    if "constitution" in meta:
        c = meta["constitution"]
        lines.append(
            f"- constitution: `{c['name']}` (sha256 `{c['sha256']}`), principles: {', '.join(c['principles'])}"
        )
    if "judge_model" in meta:
        lines.append(f"- judge model: `{meta['judge_model']}`")
    if "models" in meta:
        roles = meta["models"]
        lines.append(
            f"- models: policy `{roles['policy']}`, feedback (critiques, revisions) `{roles['feedback']}`, "
            f"judge `{roles['judge']}`"
        )
    if "seed" in meta:
        lines.append(f"- seed: {meta['seed']}")
    for key, value in sorted(meta.get("counts", {}).items()):
        lines.append(f"- {key}: {value}")
    if meta.get("metrics"):
        lines += ["", "## Final metrics", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {key} | {value:.6g} |" for key, value in sorted(meta["metrics"].items())]
    lines += ["", "The full run configuration is in `meta.json`; `manifest.json` lists the SHA-256 of every file.", ""]
    return "\n".join(lines)


def save_hf_checkpoint(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, meta: dict[str, Any]
) -> Path:
    """Write a loadable Hugging Face folder with meta.json, README.md and manifest.json (last); returns `folder`.

    Built in a temporary sibling folder and renamed into place; an existing folder at `folder` is replaced.
    For a peft model, the adapter goes to `adapter/` and the merged weights to the top level.
    """
    model = unwrap(model)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        if _is_peft(model):
            model.save_pretrained(tmp / ADAPTER_DIR)
            # merge_and_unload mutates the model it is called on: merge a copy, the caller's model stays a PeftModel.
            full = copy.deepcopy(model).merge_and_unload()
        else:
            full = model
        full.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / META_FILE, meta)
        atomic_write_text(tmp / CARD_FILE, model_card(meta))
        write_manifest(tmp, {"stage": meta.get("stage")})  # last: its presence means complete
        _replace_dir(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved checkpoint %s", folder)
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint folder; StoreError when the folder is incomplete or not a checkpoint."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise StoreError(f"{folder} has no {MANIFEST}: not a complete rlaif checkpoint")
    path = folder / META_FILE
    if not path.exists():
        raise StoreError(f"{path} is missing: not an rlaif checkpoint")
    return json.loads(path.read_text(encoding="utf-8"))


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename src to dst; an existing dst is moved aside first (a directory rename cannot overwrite a full one)."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


# ---------------------------------------------------------------------------------------------------------------
# Step states (resume)
# ---------------------------------------------------------------------------------------------------------------


def step_dir(steps_dir: Path, step: int) -> Path:
    return Path(steps_dir) / f"{STEP_PREFIX}{step:08d}"


def list_steps(steps_dir: Path) -> list[int]:
    """Steps with a complete state in `steps_dir`, ascending (temporary folders are ignored)."""
    steps_dir = Path(steps_dir)
    if not steps_dir.is_dir():
        return []
    found = [
        int(m.group(1)) for p in steps_dir.iterdir() if (m := _STEP_RE.match(p.name)) and (p / _STEP_INFO).exists()
    ]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA) in a form `torch.load(weights_only=True)` accepts."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(model: torch.nn.Module, path: Path, trainable_only: bool = False) -> None:
    """Write the model's tensors to one safetensors file (shared/tied tensors handled); with trainable_only, only
    the parameters with requires_grad (a LoRA adapter and the heads that train), by their `named_parameters` name."""
    from safetensors.torch import save_file, save_model

    model = unwrap(model)
    if trainable_only:
        save_file({name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}, str(path))
    else:
        save_model(model, str(path))


def load_weights(model: torch.nn.Module, path: Path, trainable_only: bool = False) -> None:
    """Load `save_weights`' file into `model` in place; every tensor it needs must be there, and no other."""
    from safetensors.torch import load_file, load_model

    model = unwrap(model)
    device = str(next(model.parameters()).device)
    if not trainable_only:
        load_model(model, str(path), strict=True, device=device)
        return
    tensors = load_file(str(path), device=device)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if tensors.keys() != trainable:
        raise StoreError(
            f"{path}: holds {len(tensors)} tensors, the model trains {len(trainable)} "
            f"({len(tensors.keys() - trainable)} unknown, {len(trainable - tensors.keys())} missing): not its state"
        )
    model.load_state_dict(tensors, strict=False)  # the frozen rest stays as loaded from the base model


def save_step_state(
    steps_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    trainable_only: bool = False,
) -> Path:
    """Write `steps_dir/step-<step>/` atomically and delete all but the newest `keep` step folders.

    Contents: model.safetensors (shared/tied tensors handled; with `trainable_only` the trainable parameters
    only), trainer_state.pt (optimizer, scheduler, RNG states, extra) and step.json. `extra` must be made of
    tensors, numbers, strings, lists, tuples and dicts (what `torch.load(weights_only=True)` reads back). Call it
    on rank 0 only.
    """
    import torch

    if keep < 1:
        raise ValueError(f"keep={keep}: at least one step state must be kept")
    steps_dir = Path(steps_dir)
    steps_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(steps_dir, step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=steps_dir))
    try:
        save_weights(model, tmp / _WEIGHTS, trainable_only)
        trainer_state = {
            "step": step,
            "trainable_only": trainable_only,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        }
        torch.save(trainer_state, tmp / _TRAINER_STATE)
        atomic_write_json(tmp / _STEP_INFO, {"step": step})  # last: marks the folder complete
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_steps(steps_dir)[:-keep]:
        shutil.rmtree(step_dir(steps_dir, old), ignore_errors=True)
    log.info("saved step state %s", final)
    return final


def _load_trainer_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path / _TRAINER_STATE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise StoreError(f"{path / _TRAINER_STATE}: cannot read the step state: {exc}") from exc


def load_latest_step_state(
    steps_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any | None
) -> int | None:
    """Restore the newest step state into model, optimizer, scheduler and the RNGs; its step, or None if none.

    Every rank calls this (each loads the same files), so all ranks resume identically. A state saved with
    `trainable_only` restores the trainable parameters; the rest of `model` must already be the frozen base.
    """
    steps = list_steps(steps_dir)
    if not steps:
        return None
    path = step_dir(steps_dir, steps[-1])
    state = _load_trainer_state(path)
    load_weights(model, path / _WEIGHTS, bool(state.get("trainable_only", False)))
    if optimizer is not None:
        if state["optimizer"] is None:
            raise StoreError(f"{path}: saved without optimizer state, cannot resume an optimizer from it")
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        if state["scheduler"] is None:
            raise StoreError(f"{path}: saved without scheduler state, cannot resume a scheduler from it")
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    log.info("resumed from step state %s", path)
    return int(state["step"])


def remove_resume_states(out_dir: Path, *folders: str) -> None:
    """Delete a finished stage's resume states: the `folders` of `out_dir` (step states, best-policy copies) and
    the temporary files and folders a killed save left at its top level (`.model.*.tmp`, `.model.old-*`).

    Call it once the stage's model folder is complete (its manifest written), never before: until then the step
    states are what a resume starts from. It runs both right after the save and when a redelivered task finds
    the model done, so a worker killed between the two leaves nothing behind.
    """
    out_dir = Path(out_dir)
    for name in folders:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    if out_dir.is_dir():
        for leftover in out_dir.iterdir():
            if not leftover.name.startswith(".") or not (leftover.name.endswith(".tmp") or ".old-" in leftover.name):
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def read_step_extra(steps_dir: Path, step: int) -> dict[str, Any]:
    """The `extra` dict saved with a step state."""
    path = step_dir(steps_dir, step)
    if not (path / _STEP_INFO).exists():
        raise StoreError(f"{path}: no complete step state")
    return _load_trainer_state(path)["extra"]
