"""/v1/checkpoints: a checkpoint's files, a streamed tar of its Hugging Face folder, or one listed file."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, status
from fastapi.responses import FileResponse, StreamingResponse

from api.crud import checkpoint_public, get_checkpoint
from api.deps import OwnerDep, ReadSessionDep, StoreDep
from api.errors import ApiError
from api.schemas import CheckpointPublic, ErrorPublic
from rlaif.store import MANIFEST

router = APIRouter(prefix="/checkpoints", tags=["checkpoints"])

_NOT_FOUND = {404: {"model": ErrorPublic}}
BLOCK = 512
CHUNK = 1 << 20


@router.get("/{checkpoint_id}", responses=_NOT_FOUND)
def read_checkpoint(checkpoint_id: str, session: ReadSessionDep, owner: OwnerDep) -> CheckpointPublic:
    return checkpoint_public(get_checkpoint(session, owner, checkpoint_id))


@router.get(
    "/{checkpoint_id}/download",
    response_class=StreamingResponse,
    responses={**_NOT_FOUND, 200: {"content": {"application/x-tar": {}}, "description": "A tar of the folder."}},
)
def download_checkpoint(
    checkpoint_id: str, session: ReadSessionDep, store: StoreDep, owner: OwnerDep
) -> StreamingResponse:
    """The checkpoint folder as a tar stream: `<stage>-<step>/` with every manifest file and manifest.json last."""
    row = get_checkpoint(session, owner, checkpoint_id)
    folder = store.artifact(row.path)
    names = [*sorted(row.files), MANIFEST]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ApiError(
            status.HTTP_410_GONE, f"checkpoint {checkpoint_id} is incomplete on the server: {missing[:3]} missing"
        )
    prefix = f"{row.stage}-{row.step}"
    headers = {"Content-Disposition": f'attachment; filename="{row.run_id}-{prefix}.tar"'}
    return StreamingResponse(_tar_stream(folder, names, prefix), media_type="application/x-tar", headers=headers)


@router.get(
    "/{checkpoint_id}/files/{path:path}",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        200: {
            "content": {"*/*": {}},
            "description": "The file's bytes, with the Content-Type of its name.",
        },
    },
)
def download_file(
    checkpoint_id: str, path: str, session: ReadSessionDep, store: StoreDep, owner: OwnerDep
) -> FileResponse:
    """One file of the checkpoint; only files listed in its manifest (and the manifest itself) are served."""
    row = get_checkpoint(session, owner, checkpoint_id)
    if path != MANIFEST and path not in row.files:
        raise ApiError(status.HTTP_404_NOT_FOUND, f"{path!r} is not a file of checkpoint {checkpoint_id}'s manifest")
    target = store.artifact(f"{row.path}/{path}")
    if not target.is_file():
        raise ApiError(status.HTTP_410_GONE, f"{path!r} of checkpoint {checkpoint_id} is missing on the server")
    return FileResponse(target, filename=Path(path).name)


def _tar_stream(folder: Path, names: list[str], prefix: str) -> Iterator[bytes]:
    """A ustar/pax archive written block by block, so a multi-GB model never sits in memory."""
    for name in names:
        path = folder / name
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size = path.stat().st_size
        info.mode = 0o644
        info.mtime = int(path.stat().st_mtime)
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk
        if info.size % BLOCK:
            yield b"\0" * (BLOCK - info.size % BLOCK)
    yield b"\0" * (2 * BLOCK)  # end-of-archive marker
