"""/v1/constitutions: upload, validation errors with lines and fields, versions, shipped files, owners."""

from __future__ import annotations

import secrets
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from service_fixtures import REPO, Service, auth, error_of

from rlaif.constitution import load_constitution, parse_constitution

MINIMAL = (REPO / "constitutions" / "minimal.yaml").read_bytes()


def test_upload_returns_the_version_and_is_idempotent(api: TestClient) -> None:
    document = yaml.safe_load(MINIMAL)
    document["name"] = f"minimal-{secrets.token_hex(4)}"  # a version no other test uploaded
    text = yaml.safe_dump(document, sort_keys=False).encode()
    expected = parse_constitution(text)
    first = api.post("/v1/constitutions", content=text, headers={**auth(), "Content-Type": "application/yaml"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["sha256"]) == (document["name"], expected.sha256)
    assert (body["owner"], body["source"]) == ("alice", "upload")
    assert [p["id"] for p in body["principles"]] == [p.id for p in expected.principles]
    assert body["document"] == expected.model_dump(mode="json")
    # The same content as JSON is the same version: the hash is over the canonical content, not the YAML layout.
    again = api.post("/v1/constitutions", json=document, headers=auth())
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]


def test_invalid_yaml_reports_the_line(api: TestClient) -> None:
    response = api.post("/v1/constitutions", content=b"name: x\nprinciples: [\n  - id: a\n", headers=auth())
    status, detail, errors = error_of(response)
    assert status == 422
    assert detail == "invalid constitution: 1 problem(s)"
    assert errors[0].startswith("<request>:") and "invalid YAML" in errors[0]


def test_every_schema_problem_is_listed_with_line_and_field(api: TestClient) -> None:
    document = yaml.safe_load(MINIMAL)
    del document["principles"][0]["critique"]  # line of principles[0]
    document["principles"][1]["id"] = document["principles"][2]["id"]  # duplicate id
    document["principles"][2]["tags"] = ["kind"]  # not a tag
    text = yaml.safe_dump(document, sort_keys=False)
    status, detail, errors = error_of(api.post("/v1/constitutions", content=text.encode(), headers=auth()))
    assert status == 422
    assert detail == "invalid constitution: 3 problem(s)"
    lines = text.splitlines()
    joined = "\n".join(errors)
    assert "principles[0].critique: field required" in joined
    assert "principles[2].tags[0]" in joined
    assert "principles[2].id: duplicate principle id" in joined
    for error in errors:  # every problem names a line of the document
        number = int(error.split(":")[1])
        assert 1 <= number <= len(lines)


def test_empty_and_oversized_bodies(api: TestClient, api_service: Service) -> None:
    status, detail, _ = error_of(api.post("/v1/constitutions", content=b"  \n", headers=auth()))
    assert (status, detail) == (422, "empty request body")

    from api.main import create_app

    with TestClient(create_app(api_service.settings(max_upload_bytes=100))) as small:
        status, detail, _ = error_of(small.post("/v1/constitutions", content=MINIMAL, headers=auth()))
    assert status == 413
    assert detail == "upload larger than 100 bytes (the server's RLAIF_MAX_UPLOAD_BYTES)"


def test_list_shows_own_and_shipped_versions_but_not_other_owners(api: TestClient) -> None:
    document = yaml.safe_load(MINIMAL)
    document["name"] = "bobs-own"
    bobs = api.post("/v1/constitutions", content=yaml.safe_dump(document).encode(), headers=auth("bob")).json()
    listed = api.get("/v1/constitutions", headers=auth()).json()
    shipped = {c["source"]: c for c in listed["data"] if c["owner"] == "shipped"}
    assert {"harmless.yaml", "hhh.yaml", "minimal.yaml"} <= set(shipped)
    assert all(c["owner"] in ("alice", "shipped") for c in listed["data"])
    assert listed["count"] == len(listed["data"])
    # Shipped versions are readable by everyone; another owner's upload is not even acknowledged to exist.
    assert api.get(f"/v1/constitutions/{shipped['harmless.yaml']['id']}", headers=auth("bob")).status_code == 200
    status, detail, _ = error_of(api.get(f"/v1/constitutions/{bobs['id']}", headers=auth()))
    assert (status, detail) == (404, f"constitution {bobs['id']!r} not found")
    assert api.get(f"/v1/constitutions/{bobs['id']}", headers=auth("bob")).json()["document"]["name"] == "bobs-own"


def test_an_edited_shipped_file_is_a_new_version_without_restart(api: TestClient, api_service: Service) -> None:
    path: Path = api_service.constitutions_dir / "minimal.yaml"
    before = {c["sha256"] for c in _shipped(api, "minimal.yaml")}
    document = yaml.safe_load(path.read_text())
    document["description"] = "edited while the server runs"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    after = _shipped(api, "minimal.yaml")
    new = [c for c in after if c["sha256"] not in before]
    assert len(new) == 1 and new[0]["sha256"] == load_constitution(path).sha256
    assert before < {c["sha256"] for c in after}  # the old version stays (runs may have pinned it)
    detail = api.get(f"/v1/constitutions/{new[0]['id']}", headers=auth()).json()
    assert detail["document"]["description"] == "edited while the server runs"


def test_unknown_id_is_404(api: TestClient) -> None:
    status, detail, _ = error_of(api.get("/v1/constitutions/con-0000000000000000", headers=auth()))
    assert (status, detail) == (404, "constitution 'con-0000000000000000' not found")


def _shipped(api: TestClient, source: str) -> list[dict]:
    listed = api.get("/v1/constitutions", headers=auth()).json()["data"]
    return [c for c in listed if c["owner"] == "shipped" and c["source"] == source]
