"""/v1/checkpoints: listing with sizes and SHA-256, streamed tar download verified by the client, single files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of

from rlaif.client import Client
from rlaif.service.db import CheckpointRow, get_engine, new_id, session_factory
from rlaif.store import StoreError, sha256_file, write_manifest


@pytest.fixture(scope="module")
def checkpoint(api: TestClient, api_service: Service) -> dict[str, Any]:
    """A run of alice's with a model folder registered as its ppo checkpoint (what a training task records)."""
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=["one?", "two?", "three?", "four?"], headers=auth())
    request = {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"], "config": TINY_RUN}
    run = api.post("/v1/runs", json=request, headers=auth()).json()
    folder = api_service.artifacts / "runs" / run["id"] / "ppo" / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 1000)  # not a multiple of the tar block
    (folder / "sub" / "notes.txt").write_text("nested file")
    manifest = write_manifest(folder, {"stage": "ppo"})
    checkpoint_id = new_id("ckpt")
    with session_factory(get_engine(api_service.db_url)).begin() as session:
        session.add(
            CheckpointRow(
                id=checkpoint_id, run_id=run["id"], owner="alice", stage="ppo", step=2,
                path=folder.relative_to(api_service.artifacts).as_posix(), metrics={"objective/kl": 0.5},
                files=manifest["files"],
            )
        )  # fmt: skip
    return {"id": checkpoint_id, "run": run["id"], "folder": folder}


def test_listing_has_every_file_with_size_and_sha256(api: TestClient, checkpoint: dict[str, Any]) -> None:
    listed = api.get(f"/v1/runs/{checkpoint['run']}/checkpoints", headers=auth()).json()
    assert listed["count"] == 1
    entry = listed["data"][0]
    assert (entry["id"], entry["stage"], entry["step"], entry["metrics"]) == (
        checkpoint["id"],
        "ppo",
        2,
        {"objective/kl": 0.5},
    )
    folder: Path = checkpoint["folder"]
    assert entry["files"] == [
        {"path": name, "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
        for name in ("config.json", "model.safetensors", "sub/notes.txt")
    ]
    assert api.get(f"/v1/checkpoints/{checkpoint['id']}", headers=auth()).json() == entry


def test_tar_download_streams_the_folder_and_the_client_verifies_it(
    api: TestClient, checkpoint: dict[str, Any], tmp_path: Path
) -> None:
    response = api.get(f"/v1/checkpoints/{checkpoint['id']}/download", headers=auth())
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = tar.getnames()
        assert tar.extractfile("ppo-2/model.safetensors").read() == bytes(range(256)) * 1000  # type: ignore[union-attr]
    assert names == ["ppo-2/config.json", "ppo-2/model.safetensors", "ppo-2/sub/notes.txt", "ppo-2/manifest.json"]
    client = Client("http://testserver", None)
    # A TestClient of its own (the shared one must keep sending no key by default) speaks httpx's client API.
    client.http = TestClient(api.app, headers=auth())  # type: ignore[assignment]
    entry = client.checkpoints(checkpoint["run"])[0]
    folder = client.download_checkpoint(entry, tmp_path)
    assert folder == tmp_path / "ppo-2"
    assert (folder / "sub" / "notes.txt").read_text() == "nested file"
    # A file that differs from the manifest (corrupted in transit or on disk) is refused.
    tampered = {
        **entry,
        "files": [{**f, "sha256": "0" * 64} if f["path"] == "config.json" else f for f in entry["files"]],
    }
    with pytest.raises(StoreError, match="config.json: SHA-256 differs"):
        client.download_checkpoint(tampered, tmp_path / "again")


def test_single_files_only_from_the_manifest(api: TestClient, checkpoint: dict[str, Any]) -> None:
    base = f"/v1/checkpoints/{checkpoint['id']}/files"
    assert api.get(f"{base}/sub/notes.txt", headers=auth()).text == "nested file"
    assert api.get(f"{base}/manifest.json", headers=auth()).json()["files"]["config.json"]["bytes"] == 23
    (checkpoint["folder"] / "secret.txt").write_text("not listed")
    status, detail, _ = error_of(api.get(f"{base}/secret.txt", headers=auth()))
    assert (status, detail) == (404, f"'secret.txt' is not a file of checkpoint {checkpoint['id']}'s manifest")
    for path in (
        "sub/../../../inputs/config.json",
        "%2e%2e/%2e%2e/inputs/config.json",
        "sub%2F..%2F..%2Fconfig.json",
        "/etc/passwd",  # absolute (the URL has "//etc/passwd")
        "%2Fetc%2Fpasswd",
        "config.json%00.txt",  # NUL
        f"{checkpoint['folder']}/config.json",  # the server's own absolute path of a listed file
    ):
        assert error_of(api.get(f"{base}/{path}", headers=auth()))[0] == 404  # never outside the manifest


def test_other_owners_and_unknown_ids_are_404(api: TestClient, checkpoint: dict[str, Any]) -> None:
    for path in ("", "/download", "/files/config.json"):
        status, detail, _ = error_of(api.get(f"/v1/checkpoints/{checkpoint['id']}{path}", headers=auth("bob")))
        assert (status, detail) == (404, f"checkpoint {checkpoint['id']!r} not found")
    assert error_of(api.get("/v1/checkpoints/ckpt-0000000000000000/download", headers=auth()))[0] == 404


def test_a_checkpoint_missing_on_disk_is_410(api: TestClient, checkpoint: dict[str, Any], api_service: Service) -> None:
    with session_factory(get_engine(api_service.db_url)).begin() as session:
        row = session.get(CheckpointRow, checkpoint["id"])
        assert row is not None
        gone = CheckpointRow(
            id=new_id("ckpt"), run_id=row.run_id, owner="alice", stage="sft", step=1,
            path=row.path.replace("/ppo/", "/sft/"), metrics={}, files=row.files,
        )  # fmt: skip
        session.add(gone)
    status, detail, _ = error_of(api.get(f"/v1/checkpoints/{gone.id}/download", headers=auth()))
    assert status == 410 and "incomplete on the server" in detail


def test_download_is_streamed_in_pieces(api: TestClient, checkpoint: dict[str, Any]) -> None:
    with api.stream("GET", f"/v1/checkpoints/{checkpoint['id']}/download", headers=auth()) as response:
        chunks = list(response.iter_bytes())
    assert sum(map(len, chunks)) % 512 == 0 and len(chunks) > 1  # block-aligned, and sent in pieces
