"""A small HTTP client of the rlaif REST API (httpx), used by `rlaif submit/watch/pull/demo` and the tests.

from rlaif.client import Client
client = Client("http://127.0.0.1:8000", "my-key")
print(client.run("run-..."))
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from rlaif.store import MANIFEST, StoreError, sha256_file, verify_manifest

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(RuntimeError):
    """An error answer of the API: status code, one-line detail and every listed problem."""

    def __init__(self, status_code: int, detail: str, errors: list[str] | None = None):
        self.status_code = status_code
        self.detail = detail
        self.errors = errors or []
        lines = [f"HTTP {status_code}: {detail}", *(f"  {e}" for e in self.errors)]
        super().__init__("\n".join(lines))


class ApiUnreachable(ApiError):
    """No answer at all: the API is down, restarting, or not at that address."""

    def __init__(self, url: str, reason: str):
        super().__init__(
            0, f"cannot reach the API at {url} ({reason}): is `rlaif serve` running there? (RLAIF_API_URL)"
        )
        self.args = (self.detail,)

    def __str__(self) -> str:
        return self.detail


class Client:
    """Calls to one API server with one key; every error answer raises ApiError."""

    def __init__(self, url: str, key: str | None, timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:  # refused, reset, timed out: no HTTP answer
            raise ApiUnreachable(str(self.http.base_url), str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text[:500]}
            raise ApiError(response.status_code, str(body.get("detail")), list(body.get("errors") or []))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    # ------------------------------------------------------------ resources

    def health(self) -> dict[str, Any]:
        return self.json("GET", "/healthz")

    def upload_constitution(self, document: bytes, content_type: str = "application/yaml") -> dict[str, Any]:
        return self.json("POST", "/v1/constitutions", content=document, headers={"Content-Type": content_type})

    def upload_prompts(self, path: Path, name: str | None = None) -> dict[str, Any]:
        with path.open("rb") as handle:
            files = {"file": (path.name, handle, "application/x-ndjson")}
            return self.json("POST", "/v1/prompt-sets", files=files, params={"name": name or path.stem})

    def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/v1/runs", json=body)

    def run(self, run_id: str) -> dict[str, Any]:
        return self.json("GET", f"/v1/runs/{run_id}")

    def events(self, run_id: str, after: int = 0, limit: int = 200, kind: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"after": after, "limit": limit}
        if kind:
            params["kind"] = kind
        return self.json("GET", f"/v1/runs/{run_id}/events", params=params)

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.json("POST", f"/v1/runs/{run_id}/cancel")

    def resume(self, run_id: str) -> dict[str, Any]:
        return self.json("POST", f"/v1/runs/{run_id}/resume")

    def delete_run(self, run_id: str) -> dict[str, Any]:
        """Delete a stopped run with its artifacts: {"id", "bytes_freed"}; 409 while it is queued or running."""
        return self.json("DELETE", f"/v1/runs/{run_id}")

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        return self.json("GET", f"/v1/runs/{run_id}/checkpoints")["data"]

    def report(self, run_id: str) -> dict[str, Any]:
        """The evaluation report (rlaif.evaluation.report.EvalReport as JSON); 404 until the evaluation finished."""
        return self.json("GET", f"/v1/runs/{run_id}/report")

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        """Runs side by side (rlaif.evaluation.run_compare.RunComparison as JSON); 2 to 8 of the key's runs."""
        return self.json("GET", "/v1/runs/compare", params={"ids": ",".join(run_ids)})

    def queue_head_to_head(self, run_a: str, run_b: str) -> dict[str, Any]:
        """Queue run A against run B head to head (rlaif.evaluation.head_to_head.HeadToHeadState as JSON): 202
        pending or running, 200 when already done for these evaluations; 409 while a run's evaluation has not
        succeeded."""
        return self.json("POST", "/v1/runs/compare/head-to-head", json={"run_ids": [run_a, run_b]})

    def head_to_head(self, run_a: str, run_b: str) -> dict[str, Any]:
        """The state of run A against run B head to head: pending | running | done (with the result) | failed."""
        return self.json("GET", "/v1/runs/compare/head-to-head", params={"ids": f"{run_a},{run_b}"})

    def report_html(self, run_id: str) -> str:
        """The evaluation report as one self-contained HTML page."""
        return self.request("GET", f"/v1/runs/{run_id}/report.html").text

    # ------------------------------------------------------------ downloads

    def download_checkpoint(self, checkpoint: dict[str, Any], dest: Path) -> Path:
        """Stream the checkpoint's tar into `dest`, verify every file's SHA-256; returns the model folder."""
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".pull-") as tmp:
            archive = Path(tmp) / "checkpoint.tar"
            with self.http.stream("GET", checkpoint["download_url"]) as response:
                if response.status_code >= 400:
                    response.read()
                    self.request("GET", checkpoint["download_url"])  # raises the API's error
                with archive.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
            unpacked = Path(tmp) / "unpacked"
            root = _extract(archive, unpacked)
            verify_checkpoint(root, checkpoint)
            final = dest / root.name
            if final.exists():
                shutil.rmtree(final)
            root.rename(final)
        return final


def _extract(archive: Path, into: Path) -> Path:
    """Extract regular files only, refusing absolute paths and '..' (a tar from a server is still input)."""
    into.mkdir(parents=True)
    tops: set[str] = set()
    with tarfile.open(archive, mode="r:") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or member.name.startswith("/") or ".." in parts or len(parts) < 2:
                raise StoreError(f"checkpoint archive has an unexpected entry {member.name!r}")
            tops.add(parts[0])
            target = into.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with target.open("wb") as handle:
                shutil.copyfileobj(source, handle)
    if len(tops) != 1:
        raise StoreError(f"checkpoint archive should hold one folder, found {sorted(tops)}")
    return into / tops.pop()


def verify_checkpoint(folder: Path, checkpoint: dict[str, Any]) -> None:
    """Every file listed by the API is present with its SHA-256, and the folder matches its own manifest."""
    for entry in checkpoint["files"]:
        path = folder / entry["path"]
        if not path.is_file():
            raise StoreError(f"{entry['path']} is missing from the downloaded checkpoint")
        if sha256_file(path) != entry["sha256"]:
            raise StoreError(f"{entry['path']}: SHA-256 differs from the checkpoint's manifest (corrupt download)")
    if not (folder / MANIFEST).is_file():
        raise StoreError(f"the downloaded checkpoint has no {MANIFEST}")
    verify_manifest(folder)
