"""/v1/constitutions: upload, validation errors with lines and fields, versions, shipped files, owners."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------- editing principles (PATCH) and diffs

KIND = {
    "id": "kind",
    "tags": ["helpful"],
    "critique": "Identify anything unkind in the assistant's last response.",
    "revision": "Rewrite the assistant's response to be kind.",
    "comparison": "Which of these assistant responses is kinder?",
}


def _own_minimal(api: TestClient, owner: str = "alice") -> dict:
    """A fresh version of minimal.yaml of the owner's (a name no other test uploads)."""
    document = yaml.safe_load(MINIMAL)
    document["name"] = f"edit-{secrets.token_hex(4)}"
    response = api.post("/v1/constitutions", json=document, headers=auth(owner))
    assert response.status_code == 201, response.text
    return response.json()


def _patch(api: TestClient, ident: str, *changes: dict, owner: str = "alice") -> Any:
    return api.patch(f"/v1/constitutions/{ident}", json={"changes": list(changes)}, headers=auth(owner))


def test_patch_adds_replaces_removes_and_retags_into_a_new_version(api: TestClient) -> None:
    base = _own_minimal(api)
    honest = next(p for p in base["document"]["principles"] if p["id"] == "honest")
    stricter = {**honest, "critique": "Identify every claim in the assistant's last response that may be false."}
    response = _patch(
        api,
        base["id"],
        {"op": "add", "principle": KIND, "after": "harmful"},
        {"op": "replace", "principle": stricter},
        {"op": "remove", "id": "helpful"},
        {"op": "tags", "id": "harmful", "tags": ["harmless", "honest"]},
    )
    assert response.status_code == 201, response.text
    patched = response.json()
    assert (patched["source"], patched["parent"], patched["owner"]) == ("patch", base["id"], "alice")
    assert patched["id"] != base["id"]
    assert [(p["id"], p["tags"]) for p in patched["principles"]] == [
        ("harmful", ["harmless", "honest"]),
        ("kind", ["helpful"]),
        ("honest", ["honest"]),
    ]
    assert patched["document"]["principles"][2]["critique"] == stricter["critique"]
    # The new version is what the loader makes of the same content uploaded: the same hash, the same document.
    expected = parse_constitution(yaml.safe_dump(patched["document"]))
    assert (patched["sha256"], patched["document"]) == (expected.sha256, expected.model_dump(mode="json"))
    assert api.get(f"/v1/constitutions/{patched['id']}", headers=auth()).json()["parent"] == base["id"]
    # The parent is untouched, and the same patch again is the same version (200).
    assert api.get(f"/v1/constitutions/{base['id']}", headers=auth()).json()["sha256"] == base["sha256"]
    again = _patch(
        api,
        base["id"],
        {"op": "add", "principle": KIND, "after": "harmful"},
        {"op": "replace", "principle": stricter},
        {"op": "remove", "id": "helpful"},
        {"op": "tags", "id": "harmful", "tags": ["harmless", "honest"]},
    )
    assert (again.status_code, again.json()["id"]) == (200, patched["id"])

    # The diff against the parent (the default) lists each change.
    diff = api.get(f"/v1/constitutions/{patched['id']}/diff", headers=auth())
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert (body["id"], body["against"]) == (patched["id"], base["id"])
    assert [p["id"] for p in body["added"]] == ["kind"]
    assert [p["id"] for p in body["removed"]] == ["helpful"]
    assert [(c["id"], c["fields"]) for c in body["changed"]] == [("harmful", ["tags"]), ("honest", ["critique"])]
    assert body["changed"][1]["before"]["critique"] == honest["critique"]
    assert (body["reordered"], body["other_changes"]) == (False, [])
    # The other way round, with `against` given: added and removed swap.
    back = api.get(f"/v1/constitutions/{base['id']}/diff", params={"against": patched["id"]}, headers=auth()).json()
    assert ([p["id"] for p in back["added"]], [p["id"] for p in back["removed"]]) == (["helpful"], ["kind"])
    # A version without a parent is compared with nothing: every principle is added.
    root = api.get(f"/v1/constitutions/{base['id']}/diff", headers=auth()).json()
    assert root["against"] is None and [p["id"] for p in root["added"]] == ["harmful", "honest", "helpful"]


def test_a_shipped_version_can_be_patched_into_ones_own(api: TestClient) -> None:
    shipped = next(c for c in api.get("/v1/constitutions", headers=auth()).json()["data"] if c["source"] == "hhh.yaml")
    response = _patch(api, shipped["id"], {"op": "remove", "id": "no-sycophancy"}, owner="bob")
    assert response.status_code == 201, response.text
    assert (response.json()["owner"], response.json()["parent"]) == ("bob", shipped["id"])
    diff = api.get(f"/v1/constitutions/{response.json()['id']}/diff", headers=auth("bob")).json()
    assert [p["id"] for p in diff["removed"]] == ["no-sycophancy"] and not diff["added"] + diff["changed"]


def test_a_patch_naming_no_principle_is_422_with_every_reason(api: TestClient) -> None:
    base = _own_minimal(api)
    status, detail, errors = error_of(
        _patch(
            api,
            base["id"],
            {"op": "remove", "id": "nope"},
            {"op": "replace", "principle": {**KIND, "id": "missing"}},
            {"op": "tags", "id": "gone", "tags": ["honest"]},
            {"op": "add", "principle": {**KIND, "id": "honest"}},
            {"op": "add", "principle": KIND, "after": "nowhere"},
        )
    )
    assert (status, detail) == (422, "invalid patch: 5 problem(s)")
    have = "(the constitution has harmful, honest, helpful)"
    assert errors == [
        f"changes[0].id: no principle 'nope' {have}",
        f"changes[1].principle.id: no principle 'missing' {have}",
        f"changes[2].id: no principle 'gone' {have}",
        "changes[3].principle.id: principle 'honest' exists already (replace it)",
        f"changes[4].after: no principle 'nowhere' {have}",
    ]
    children = [c for c in api.get("/v1/constitutions", headers=auth()).json()["data"] if c["parent"] == base["id"]]
    assert children == []  # nothing stored


def test_an_invalid_result_is_422_from_the_loader_with_lines(api: TestClient) -> None:
    base = _own_minimal(api)
    # Removing the principle a critique example names, and every principle: the loader's own checks.
    status, detail, errors = error_of(_patch(api, base["id"], {"op": "remove", "id": "harmful"}))
    assert (status, detail) == (422, "invalid patch: 1 problem(s)")
    assert re.fullmatch(r"<patched>:\d+: critique_examples\[0\]\.principle: unknown principle id 'harmful'", errors[0])
    removals = [{"op": "remove", "id": pid} for pid in ("harmful", "honest", "helpful")]
    status, _, errors = error_of(_patch(api, base["id"], *removals))
    assert status == 422
    assert re.fullmatch(
        r"<patched>:\d+: principles: List should have at least 1 item after validation, not 0", errors[0]
    )
    # A principle that is not one, or a change that is not one: the request's own 422, naming the field.
    status, _, errors = error_of(_patch(api, base["id"], {"op": "add", "principle": {**KIND, "critique": " "}}))
    assert (status, errors) == (
        422,
        ["body.changes[0].add.principle.critique: String should have at least 1 character"],
    )
    status, _, errors = error_of(_patch(api, base["id"], {"op": "rename", "id": "honest"}))
    assert status == 422 and "body.changes[0]" in errors[0] and "'add', 'replace', 'remove', 'tags'" in errors[0]
    status, _, errors = error_of(api.patch(f"/v1/constitutions/{base['id']}", json={"changes": []}, headers=auth()))
    assert (status, errors) == (422, ["body.changes: List should have at least 1 item after validation, not 0"])
    # Nothing was stored: the caller's versions are the same as before.
    children = [c for c in api.get("/v1/constitutions", headers=auth()).json()["data"] if c["parent"] == base["id"]]
    assert children == []


def test_another_keys_version_is_404_to_patch_and_diff(api: TestClient) -> None:
    alices = _own_minimal(api)
    bobs = _own_minimal(api, owner="bob")
    remove = {"op": "remove", "id": "helpful"}
    for ident in (alices["id"], "con-0000000000000000"):
        status, detail, _ = error_of(_patch(api, ident, remove, owner="bob"))
        assert (status, detail) == (404, f"constitution {ident!r} not found")
        status, detail, _ = error_of(api.get(f"/v1/constitutions/{ident}/diff", headers=auth("bob")))
        assert (status, detail) == (404, f"constitution {ident!r} not found")
        # Bob's own version against alice's (or a made-up) one: 404 for the other id, too.
        against = api.get(f"/v1/constitutions/{bobs['id']}/diff", params={"against": ident}, headers=auth("bob"))
        assert error_of(against)[:2] == (404, f"constitution {ident!r} not found")
