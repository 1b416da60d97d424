"""/v1/preference-sets: JSONL uploads of human comparisons; de-duplication; errors by line and field; 413; owners;
a run that names a set pins its pairs (<run>/inputs/human_pairs.jsonl); 409 on deleting a set a run uses.

    python -m pytest tests/api/test_preference_sets.py -q
"""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of

from rlaif.preference_sets import MAX_PAIRS, pair_id, read_human_pairs
from rlaif.records import HumanPair
from rlaif.stages import HUMAN_PAIRS_FILE, INPUTS
from rlaif.store import ArtifactStore, verify_manifest

MINIMAL = REPO / "constitutions" / "minimal.yaml"
PAIRS = [
    {"prompt": "How do I boil an egg?", "chosen": "Simmer it for eight minutes.", "rejected": "Figure it out."},
    {"prompt": "how do I boil an egg", "chosen": "simmer it for eight minutes", "rejected": "figure it out"},  # dup
    {"id": "hp-joke", "prompt": "Tell me a joke.", "chosen": "Why did the egg...", "rejected": "No.", "note": "x"},
]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _upload(api: TestClient, rows: list[dict], owner: str = "alice") -> dict:
    response = api.post("/v1/preference-sets", content=_jsonl(rows), headers=auth(owner))
    assert response.status_code == 201, response.text
    return response.json()


def test_jsonl_body_and_multipart_file_are_deduplicated(api: TestClient) -> None:
    body = _upload(api, PAIRS)
    assert (body["count"], body["duplicates"], body["name"]) == (2, 1, "preferences")
    first = PAIRS[0]
    assert body["preview"] == [
        {"id": pair_id(first["prompt"], first["chosen"], first["rejected"]), **first},
        {"id": "hp-joke", "prompt": "Tell me a joke.", "chosen": "Why did the egg...", "rejected": "No."},
    ]  # (the extra "note" is not kept)
    assert api.get(f"/v1/preference-sets/{body['id']}", headers=auth()).json() == body
    files = {"file": ("p.jsonl", b"\n" + _jsonl(PAIRS[:1]), "application/x-ndjson")}
    upload = api.post("/v1/preference-sets", files=files, params={"name": "up"}, headers=auth())
    assert (upload.status_code, upload.json()["name"], upload.json()["count"]) == (201, "up", 1)
    listed = api.get("/v1/preference-sets", headers=auth()).json()
    assert {body["id"], upload.json()["id"]} <= {row["id"] for row in listed["data"]}
    assert all(row["preview"] == [] for row in listed["data"]) and listed["count"] >= 2


def test_bad_rows_are_listed_by_line_and_field(api: TestClient) -> None:
    rows = [
        json.dumps(PAIRS[0]),
        json.dumps({"prompt": "Hi?", "chosen": " ", "rejected": "Go away."}),
        "",  # (blank lines are skipped but counted)
        json.dumps({"prompt": "Hi?", "chosen": "Hello!"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "hello"}),
        json.dumps({"prompt": "", "chosen": 3, "rejected": "x", "id": "bad id!"}),
        json.dumps({"prompt": "Other?", "chosen": "Yes.", "rejected": "No.", "id": "hp-joke"}),
        json.dumps({"prompt": "Another?", "chosen": "Yes.", "rejected": "No.", "id": "hp-joke"}),
    ]
    body = "\n".join(rows).encode()
    status, detail, errors = error_of(api.post("/v1/preference-sets", content=body, headers=auth()))
    assert (status, detail) == (422, "invalid preference set: 7 problem(s)")
    assert errors == [
        "<upload>:2: chosen: empty",
        "<upload>:4: rejected: missing",
        "<upload>:5: <line>: expected an object with string 'prompt', 'chosen' and 'rejected'",
        "<upload>:6: rejected: the same response as chosen (a pair compares two different responses)",
        "<upload>:7: prompt: empty",
        "<upload>:7: chosen: expected a string",
        "<upload>:9: id: duplicate id 'hp-joke' for a different pair",
    ]
    status, detail, errors = error_of(
        api.post("/v1/preference-sets", content=_jsonl(PAIRS[:1]) + b"{oops\n", headers=auth())
    )
    assert (status, detail) == (422, "invalid JSONL: 1 bad line(s)")
    assert errors[0].startswith("<upload>:2: <line>: invalid JSON")
    status, detail, _ = error_of(api.post("/v1/preference-sets", content=b"\xff\xfe\x00", headers=auth()))
    assert (status, detail) == (422, "the upload is not UTF-8 text (byte 0)")
    status, detail, _ = error_of(api.post("/v1/preference-sets", files={"other": ("x", b"y")}, headers=auth()))
    assert (status, detail) == (422, "multipart upload needs a 'file' part")


def test_size_limits_are_413(api: TestClient, api_service: Service) -> None:
    status, detail, _ = error_of(api.post("/v1/preference-sets", content=b"{}\n" * (MAX_PAIRS + 1), headers=auth()))
    assert (status, detail) == (413, f"{MAX_PAIRS + 1} pairs: a preference set holds at most {MAX_PAIRS}")

    from api.main import create_app

    with TestClient(create_app(api_service.settings(max_upload_bytes=200))) as small:
        status, detail, _ = error_of(small.post("/v1/preference-sets", content=_jsonl(PAIRS * 5), headers=auth()))
        assert status == 413 and "larger than 200 bytes" in detail


def test_another_keys_set_is_404_and_unlisted(api: TestClient) -> None:
    mine = _upload(api, PAIRS)["id"]
    assert error_of(api.get(f"/v1/preference-sets/{mine}", headers=auth("bob")))[:2] == (
        404,
        f"preference set {mine!r} not found",
    )
    assert error_of(api.delete(f"/v1/preference-sets/{mine}", headers=auth("bob")))[0] == 404
    assert mine not in {row["id"] for row in api.get("/v1/preference-sets", headers=auth("bob")).json()["data"]}
    # Bob's upload of the same pairs is his own set; his run cannot name alice's.
    bobs = _upload(api, PAIRS, owner="bob")["id"]
    assert bobs != mine
    con = api.post("/v1/constitutions", content=MINIMAL.read_bytes(), headers=auth("bob")).json()["id"]
    prompts = api.post("/v1/prompt-sets", json=["Bob's one?", "Bob's two?"], headers=auth("bob")).json()["id"]
    request = {"constitution_id": con, "prompt_set_id": prompts, "preference_set_id": mine, "config": TINY_RUN}
    assert error_of(api.post("/v1/runs", json=request, headers=auth("bob")))[:2] == (
        404,
        f"preference set {mine!r} not found",
    )


def test_a_run_pins_the_pairs_and_the_set_cannot_go_while_it_is_used(api: TestClient, api_service: Service) -> None:
    uploaded = _upload(api, PAIRS)
    con = api.post("/v1/constitutions", content=MINIMAL.read_bytes(), headers=auth()).json()["id"]
    prompts = api.post("/v1/prompt-sets", json=[f"Pinned {i}?" for i in range(4)], headers=auth()).json()["id"]
    request = {
        "constitution_id": con,
        "prompt_set_id": prompts,
        "preference_set_id": uploaded["id"],
        "config": TINY_RUN,
    }
    created = api.post("/v1/runs", json=request, headers=auth())
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["preference_set_id"] == uploaded["id"]
    assert api.get(f"/v1/runs/{run['id']}", headers=auth()).json()["preference_set_id"] == uploaded["id"]

    store = ArtifactStore(api_service.artifacts)
    inputs = store.stage_dir(run["id"], INPUTS, create=False)
    expected = [HumanPair.model_validate(item) for item in uploaded["preview"]]
    assert read_human_pairs(store, run["id"]) == expected  # the two pairs, as the set has them
    manifest = verify_manifest(inputs)  # the inputs stay verifiable, the pinned pairs listed
    assert HUMAN_PAIRS_FILE in manifest["files"] and manifest["preference_set"] == uploaded["id"]
    without = api.post("/v1/runs", json={**request, "preference_set_id": None}, headers=auth()).json()
    assert without["preference_set_id"] is None and read_human_pairs(store, without["id"]) is None

    status, detail, errors = error_of(api.delete(f"/v1/preference-sets/{uploaded['id']}", headers=auth()))
    assert (status, detail) == (
        409,
        f"preference set {uploaded['id']} is used by 1 run(s): {run['id']}; delete those runs first",
    )
    assert errors == [f"used by run {run['id']}"]
    for run_id in (run["id"], without["id"]):
        assert api.post(f"/v1/runs/{run_id}/cancel", headers=auth()).status_code == 200
        assert api.delete(f"/v1/runs/{run_id}", headers=auth()).status_code == 200
    deleted = api.delete(f"/v1/preference-sets/{uploaded['id']}", headers=auth())
    assert deleted.status_code == 204 and deleted.content == b""
    assert error_of(api.get(f"/v1/preference-sets/{uploaded['id']}", headers=auth()))[0] == 404


def test_a_dpo_run_cannot_name_a_preference_set(api: TestClient) -> None:
    """DPO has no reward model: the pairs would be silently unused."""
    pairs = _upload(api, PAIRS)["id"]
    con = api.post("/v1/constitutions", content=MINIMAL.read_bytes(), headers=auth()).json()["id"]
    prompts = api.post("/v1/prompt-sets", json=["DPO one?", "DPO two?"], headers=auth()).json()["id"]
    config = {**TINY_RUN, "policy_optimization": "dpo"}
    request = {"constitution_id": con, "prompt_set_id": prompts, "preference_set_id": pairs, "config": config}
    status, detail, errors = error_of(api.post("/v1/runs", json=request, headers=auth()))
    assert (status, detail) == (422, "invalid run")
    assert errors == ["preference_set_id: human pairs train the reward model, and a dpo run has none"]
