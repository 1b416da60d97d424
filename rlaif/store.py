"""Artifact store: datasets and checkpoints of runs under one root, written atomically.

Layout: `<root>/runs/<run_id>/<stage>/...`. Every file goes to a temporary name in the same folder and is
renamed into place, so a reader never sees half a file. A folder's `manifest.json` (SHA-256 and size of every
file) is written *last*: a folder with a valid manifest is complete; one without is resumable scratch.
Names from users never become paths without `safe_name`, so nothing escapes the root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

MANIFEST = "manifest.json"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StoreError(RuntimeError):
    """An artifact is missing, corrupt, or a name would escape the artifact root."""


def safe_name(name: str) -> str:
    """`name` if it is a single safe path component (no `/`, `..`, NUL, leading dot), else StoreError."""
    if not isinstance(name, str) or not _SAFE.match(name) or ".." in name:
        raise StoreError(f"unsafe artifact name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write records atomically, one JSON object per line; returns the count."""
    lines = [
        r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r, ensure_ascii=False, sort_keys=True)
        for r in records
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: Path, model: type[M], start: int = 0, stop: int | None = None) -> list[M]:
    """Validated records `start` to `stop` (indices of the non-blank lines; all by default); a bad line raises
    StoreError naming the file and line. Lines before `start` are skipped unparsed and reading stops at `stop`, so a
    shard that reads its slice of a large file validates only its own records."""
    out: list[M] = []
    index = -1
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            index += 1
            if index < start:
                continue
            if stop is not None and index >= stop:
                break
            try:
                out.append(model.model_validate_json(line))
            except ValueError as exc:
                raise StoreError(f"{path}:{number}: not a valid {model.__name__}: {exc}") from exc
    return out


def iter_jsonl_dicts(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def write_manifest(folder: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under `folder` (recursively) and write manifest.json last; returns the manifest.
    Hidden files and folders (an endpoint's response cache and usage ledger) are working state, not listed."""
    files = {}
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and path.name != MANIFEST and not hidden:
            rel = path.relative_to(folder).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"files": files, **(extra or {})}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def verify_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, after checking every listed file's size and SHA-256; StoreError on any mismatch."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise StoreError(f"{folder} has no {MANIFEST}: the artifact is incomplete")
    for rel, info in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise StoreError(f"{path} is listed in the manifest but missing")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise StoreError(f"{path} does not match its manifest SHA-256: the artifact is corrupt")
    return manifest


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, links not followed (each counted by its own size); 0 when it is absent."""
    total = 0
    for parent, _dirs, files in os.walk(folder):  # (os.walk follows no links to folders)
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:  # (a temporary file renamed away while we looked)
                continue
    return total


class MissingArtifact(StoreError, FileNotFoundError):
    """A file a stage reads is not there: its stage has not run (or the run has no such input)."""


class ArtifactStore:
    """Paths of a run's artifacts under one root; every path is checked to stay inside the root."""

    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()

    def run_dir(self, run_id: str) -> Path:
        return self.inside(self.root / "runs" / safe_name(run_id))

    def stage_dir(self, run_id: str, stage: str, create: bool = True) -> Path:
        path = self.inside(self.run_dir(run_id) / safe_name(stage))
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, run_id: str, stage: str, *parts: str) -> Path:
        return self.inside(self.stage_dir(run_id, stage).joinpath(*(safe_name(p) for p in parts)))

    def run_bytes(self, run_id: str) -> int:
        """What a run's artifacts (inputs, datasets, checkpoints, logs) take on disk, in bytes."""
        return folder_bytes(self.run_dir(run_id))

    def artifact(self, relative: str) -> Path:
        """An artifact path stored relative to the root (a checkpoint row's path), checked to stay inside it."""
        return self.inside(self.root / relative)

    def is_complete(self, run_id: str, stage: str) -> bool:
        return (self.stage_dir(run_id, stage, create=False) / MANIFEST).exists()

    def inside(self, path: Path) -> Path:
        """`path` resolved (symlinks followed), or StoreError when that is outside the root."""
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StoreError(f"{path} is outside the artifact root {self.root}")
        return resolved
