"""/v1/prompt-sets: JSON, JSONL and multipart uploads; de-duplication; 413 and 422 answers; owners."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from service_fixtures import Service, auth, error_of

from rlaif.prompts import MAX_PROMPTS, prompt_id


def test_json_list_is_deduplicated(api: TestClient) -> None:
    prompts = ["How do I boil an egg?", {"prompt": "how do I boil an egg"}, {"id": "g-1", "prompt": "Tell me a joke."}]
    response = api.post("/v1/prompt-sets", json=prompts, headers=auth())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["count"], body["duplicates"], body["name"]) == (2, 1, "prompts")
    assert body["preview"] == [
        {"id": prompt_id("How do I boil an egg?"), "prompt": "How do I boil an egg?"},
        {"id": "g-1", "prompt": "Tell me a joke."},
    ]
    assert api.get(f"/v1/prompt-sets/{body['id']}", headers=auth()).json() == body


def test_json_object_jsonl_body_and_multipart_file(api: TestClient) -> None:
    named = api.post("/v1/prompt-sets", json={"name": "mine", "prompts": ["a?", "b?"]}, headers=auth()).json()
    assert (named["name"], named["count"]) == ("mine", 2)
    jsonl = b'{"prompt": "first?"}\n\n{"prompt": "second?", "id": "s2"}\n'
    raw = api.post(
        "/v1/prompt-sets?name=raw", content=jsonl, headers={**auth(), "Content-Type": "application/x-ndjson"}
    )
    assert (raw.status_code, raw.json()["name"], raw.json()["count"]) == (201, "raw", 2)
    files = {"file": ("p.jsonl", jsonl, "application/x-ndjson")}
    upload = api.post("/v1/prompt-sets", files=files, params={"name": "up"}, headers=auth())
    assert (upload.status_code, upload.json()["count"], upload.json()["preview"][1]["id"]) == (201, 2, "s2")


def test_bad_rows_are_listed_by_line(api: TestClient) -> None:
    jsonl = b'{"prompt": "fine"}\n{"prompt": ""}\n{"text": "no prompt"}\n{"prompt": "ok", "id": "bad id!"}\n'
    status, detail, errors = error_of(api.post("/v1/prompt-sets", content=jsonl, headers=auth()))
    assert (status, detail) == (422, "invalid prompt set: 3 problem(s)")
    assert errors == [
        "<upload>:2: prompt: empty prompt",
        "<upload>:3: prompt: expected an object with a string 'prompt'",
        "<upload>:4: id: 'bad id!' is not a valid id (letters, digits, _.:-)",
    ]


def test_invalid_json_lines_and_bodies(api: TestClient) -> None:
    status, detail, errors = error_of(api.post("/v1/prompt-sets", content=b'{"prompt": "a"}\n{oops\n', headers=auth()))
    assert (status, detail) == (422, "invalid JSONL: 1 bad line(s)")
    assert errors[0].startswith("<upload>:2: <line>: invalid JSON")
    status, detail, errors = error_of(api.post("/v1/prompt-sets", json={"prompts": "x", "extra": 1}, headers=auth()))
    assert (status, detail) == (422, "invalid prompt set body")
    assert any(e.startswith("extra:") for e in errors) and any(e.startswith("prompts") for e in errors)
    status, detail, _ = error_of(api.post("/v1/prompt-sets", content=b"\xff\xfe\x00", headers=auth()))
    assert (status, detail) == (422, "the upload is not UTF-8 text (byte 0)")
    status, detail, _ = error_of(api.post("/v1/prompt-sets", files={"other": ("x", b"y")}, headers=auth()))
    assert (status, detail) == (422, "multipart upload needs a 'file' part")


def test_size_limits_are_413(api: TestClient, api_service: Service) -> None:
    status, detail, _ = error_of(api.post("/v1/prompt-sets", json=["p"] * (MAX_PROMPTS + 1), headers=auth()))
    assert (status, detail) == (413, f"more than {MAX_PROMPTS} prompts: a prompt set holds at most {MAX_PROMPTS}")
    jsonl = "".join(f'"p{i}"\n' for i in range(MAX_PROMPTS + 1))
    status, detail, _ = error_of(api.post("/v1/prompt-sets", content=jsonl, headers=auth()))
    assert (status, detail) == (413, f"{MAX_PROMPTS + 1} prompts: a prompt set holds at most {MAX_PROMPTS}")

    from api.main import create_app

    body = json.dumps([f"prompt number {i}" for i in range(50)]).encode()
    with TestClient(create_app(api_service.settings(max_upload_bytes=200))) as small:
        status, detail, _ = error_of(small.post("/v1/prompt-sets", content=body, headers=auth()))
        assert status == 413 and "larger than 200 bytes" in detail
        files = {"file": ("p.jsonl", body, "application/x-ndjson")}
        status, detail, _ = error_of(small.post("/v1/prompt-sets", files=files, headers=auth()))
        assert status == 413 and "larger than 200 bytes" in detail


def test_another_owners_set_is_404(api: TestClient) -> None:
    created = api.post("/v1/prompt-sets", json=["a question?"], headers=auth("bob")).json()
    status, detail, _ = error_of(api.get(f"/v1/prompt-sets/{created['id']}", headers=auth()))
    assert (status, detail) == (404, f"prompt set {created['id']!r} not found")
