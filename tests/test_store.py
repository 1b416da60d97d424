"""Artifact store: atomic writes, manifests that catch corruption, names that cannot escape the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.records import PromptItem
from rlaif.store import ArtifactStore, StoreError, read_jsonl, safe_name, verify_manifest, write_jsonl, write_manifest


def test_jsonl_round_trip_and_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    assert write_jsonl(path, [PromptItem(id="a", prompt="x"), PromptItem(id="b", prompt="y")]) == 2
    assert [r.id for r in read_jsonl(path, PromptItem)] == ["a", "b"]
    path.write_text(path.read_text() + '{"id": 3}\n')
    with pytest.raises(StoreError, match=r"p\.jsonl:3: not a valid PromptItem"):
        read_jsonl(path, PromptItem)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_a_slice_parses_only_its_own_lines(tmp_path: Path) -> None:
    """A shard reads its slice of the stage's input: the lines of other shards are not even parsed (a broken
    line there does not fail it), blank lines do not count, and reading stops at the slice's end."""
    path = tmp_path / "p.jsonl"
    lines = [PromptItem(id=str(i), prompt="q").model_dump_json() for i in range(6)]
    lines[0], lines[5] = "not json", '{"id": 5}'  # broken lines in the first and the last slice
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    assert [r.id for r in read_jsonl(path, PromptItem, 2, 4)] == ["2", "3"]
    assert [r.id for r in read_jsonl(path, PromptItem, 1, 5)] == ["1", "2", "3", "4"]
    with pytest.raises(StoreError, match=r"p\.jsonl:7: not a valid PromptItem"):  # (line 4 is blank)
        read_jsonl(path, PromptItem, 4)


def test_manifest_detects_corruption_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01")
    manifest = write_manifest(tmp_path, {"stage": "x"})
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin"}
    assert manifest["files"]["a.txt"]["bytes"] == 5
    verify_manifest(tmp_path)
    (tmp_path / "a.txt").write_text("HELLO")
    with pytest.raises(StoreError, match="does not match its manifest"):
        verify_manifest(tmp_path)
    (tmp_path / "a.txt").unlink()
    with pytest.raises(StoreError, match="missing"):
        verify_manifest(tmp_path)


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "", ".hidden", "a\x00b", "..", "x" * 200])
def test_unsafe_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        safe_name(name)
    with pytest.raises(StoreError):
        ArtifactStore(tmp_path).stage_dir("run1", name)


def test_store_paths_stay_inside_root(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    path = store.path("run-1", "critique", "records.jsonl")
    assert path == tmp_path.resolve() / "runs" / "run-1" / "critique" / "records.jsonl"
    assert not store.is_complete("run-1", "critique")
    write_manifest(store.stage_dir("run-1", "critique"))
    assert store.is_complete("run-1", "critique")
