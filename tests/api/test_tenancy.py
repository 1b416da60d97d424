"""Tenants are kept apart on every route: a second key cannot read, cancel, resume, delete or download the first
key's constitutions, prompt sets, preference sets, runs, reports or checkpoints, nor start a run on them; lists do
not show them.

The test walks the app's own OpenAPI paths, so a route added later fails here until it is classified.

    python -m pytest tests/api/test_tenancy.py -q
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from service_fixtures import REPO, TINY_RUN, Service, auth, error_of, register_checkpoint

# Every /v1 route, by what a second key must see there.
OWNED = {  # another owner's id in the path: 404, exactly as for an id that does not exist
    ("GET", "/v1/constitutions/{constitution_id}"),
    ("DELETE", "/v1/constitutions/{constitution_id}"),
    ("PATCH", "/v1/constitutions/{constitution_id}"),
    ("GET", "/v1/constitutions/{constitution_id}/diff"),
    ("GET", "/v1/prompt-sets/{prompt_set_id}"),
    ("DELETE", "/v1/prompt-sets/{prompt_set_id}"),
    ("GET", "/v1/preference-sets/{preference_set_id}"),
    ("DELETE", "/v1/preference-sets/{preference_set_id}"),
    ("GET", "/v1/runs/{run_id}"),
    ("DELETE", "/v1/runs/{run_id}"),
    ("GET", "/v1/runs/{run_id}/events"),
    ("GET", "/v1/runs/{run_id}/metrics"),
    ("GET", "/v1/runs/{run_id}/checkpoints"),
    ("GET", "/v1/runs/{run_id}/report"),
    ("GET", "/v1/runs/{run_id}/report.html"),
    ("POST", "/v1/runs/{run_id}/cancel"),
    ("POST", "/v1/runs/{run_id}/resume"),
    ("GET", "/v1/checkpoints/{checkpoint_id}"),
    ("GET", "/v1/checkpoints/{checkpoint_id}/download"),
    ("GET", "/v1/checkpoints/{checkpoint_id}/files/{path}"),
}
LISTS = {  # 200 without them
    ("GET", "/v1/runs"),
    ("GET", "/v1/constitutions"),
    ("GET", "/v1/prompt-sets"),
    ("GET", "/v1/preference-sets"),
}
CREATES = {
    ("POST", "/v1/constitutions"),
    ("POST", "/v1/prompt-sets"),
    ("POST", "/v1/preference-sets"),
    ("POST", "/v1/runs"),
}
# A body that is valid, so that what answers is the route (a request without one is a 422 before it runs).
BODIES = {("PATCH", "/v1/constitutions/{constitution_id}"): {"changes": [{"op": "remove", "id": "helpful"}]}}
OWN_FIGURES = {("GET", "/v1/usage")}  # 200 with the caller's own figures, counting nothing of another key's
# another owner's run id in ?ids=: 404, as for one that does not exist
OWNED_IN_QUERY = {("GET", "/v1/runs/compare"), ("GET", "/v1/runs/compare/head-to-head")}
OWNED_IN_BODY = {("POST", "/v1/runs/compare/head-to-head")}  # the same, for run ids in the body's run_ids


@pytest.fixture(scope="module")
def alices(api: TestClient, api_service: Service) -> dict[str, str]:
    """A constitution, prompt set, run and registered checkpoint of alice's."""
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=["tenancy one?", "tenancy two?", "tenancy three?"], headers=auth())
    pairs = b'{"prompt": "tenancy?", "chosen": "Gladly.", "rejected": "No."}\n'
    preferences = api.post("/v1/preference-sets", content=pairs, headers=auth())
    request = {
        "constitution_id": con.json()["id"],
        "prompt_set_id": prompts.json()["id"],
        "preference_set_id": preferences.json()["id"],
        "config": TINY_RUN,
    }
    run = api.post("/v1/runs", json=request, headers=auth()).json()
    checkpoint_id = register_checkpoint(api_service, run["id"])
    return {
        "constitution_id": con.json()["id"],
        "prompt_set_id": prompts.json()["id"],
        "preference_set_id": preferences.json()["id"],
        "run_id": run["id"],
        "checkpoint_id": checkpoint_id,
        "path": "config.json",
    }


def _fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    return path


def _ids_in(body: Any) -> set[str]:
    return {row["id"] for row in body["data"]}


def test_every_route_is_classified(api: TestClient) -> None:
    routes = {(m.upper(), p) for p, item in api.app.openapi()["paths"].items() if p.startswith("/v1/") for m in item}  # type: ignore[attr-defined]
    assert routes == OWNED | LISTS | CREATES | OWN_FIGURES | OWNED_IN_QUERY | OWNED_IN_BODY


def test_a_second_key_sees_nothing_of_the_first(api: TestClient, alices: dict[str, str]) -> None:
    for method, template in sorted(OWNED):
        path = _fill(template, alices)
        body = BODIES.get((method, template))
        status, detail, _ = error_of(api.request(method, path, json=body, headers=auth("bob")))
        assert status == 404 and "not found" in detail, (method, path, status, detail)
        # The same answer as for an id that does not exist: nothing tells bob that alice's id is real.
        unknown = {k: (v if k == "path" else f"{v.split('-')[0]}-0000000000000000") for k, v in alices.items()}
        other = api.request(method, _fill(template, unknown), json=body, headers=auth("bob"))
        other_status, other_detail, _ = error_of(other)
        expected = other_detail
        for name, value in unknown.items():
            expected = expected.replace(value, alices[name]) if name != "path" else expected
        assert (other_status, expected) == (status, detail), (method, template)
    for method, path in sorted(LISTS):
        listed = api.request(method, path, headers=auth("bob"))
        assert listed.status_code == 200
        assert not _ids_in(listed.json()) & set(alices.values()), path
    for method, path in sorted(OWNED_IN_QUERY):  # alice's run next to an unknown one, in either order
        unknown = "run-0000000000000000"
        for ids, missing in (
            (f"{alices['run_id']},{unknown}", alices["run_id"]),
            (f"{unknown},{alices['run_id']}", unknown),
        ):
            status, detail, _ = error_of(api.request(method, path, params={"ids": ids}, headers=auth("bob")))
            assert (status, detail) == (404, f"run {missing!r} not found"), (ids, status, detail)
        other = error_of(
            api.request(method, path, params={"ids": f"{unknown},run-1111111111111111"}, headers=auth("bob"))
        )
        assert other[:2] == (404, f"run {unknown!r} not found")
    for method, path in sorted(OWNED_IN_BODY):
        unknown = "run-0000000000000000"
        for ids, missing in (([alices["run_id"], unknown], alices["run_id"]), ([unknown, alices["run_id"]], unknown)):
            status, detail, _ = error_of(api.request(method, path, json={"run_ids": ids}, headers=auth("bob")))
            assert (status, detail) == (404, f"run {missing!r} not found"), (ids, status, detail)
    # Alice's run is queued, and counts among bob's runs queued or running no more than it lists among his runs.
    assert api.get(f"/v1/runs/{alices['run_id']}", headers=auth()).json()["status"] == "queued"
    bobs_runs = api.get("/v1/runs", params={"limit": 500}, headers=auth("bob")).json()["data"]
    for method, path in sorted(OWN_FIGURES):
        usage = api.request(method, path, headers=auth("bob"))
        assert usage.status_code == 200
        assert usage.json()["active_runs"] == sum(run["status"] in ("queued", "running") for run in bobs_runs)
    # Starting a run on alice's inputs: 404 for each, and no run is created for bob.
    request = {"constitution_id": alices["constitution_id"], "prompt_set_id": alices["prompt_set_id"]}
    status, detail, _ = error_of(api.post("/v1/runs", json=request, headers=auth("bob")))
    assert (status, detail) == (404, f"constitution {alices['constitution_id']!r} not found")
    bobs_con = api.post(
        "/v1/constitutions", content=(REPO / "constitutions/minimal.yaml").read_bytes(), headers=auth("bob")
    )
    status, detail, _ = error_of(
        api.post("/v1/runs", json={**request, "constitution_id": bobs_con.json()["id"]}, headers=auth("bob"))
    )
    assert (status, detail) == (404, f"prompt set {alices['prompt_set_id']!r} not found")
    # Uploading the same document makes bob his own version, not a handle on alice's.
    assert bobs_con.json()["id"] != alices["constitution_id"]
    same_prompts = api.post(
        "/v1/prompt-sets", json=["tenancy one?", "tenancy two?", "tenancy three?"], headers=auth("bob")
    )
    assert same_prompts.status_code == 201 and same_prompts.json()["id"] != alices["prompt_set_id"]


def test_the_first_key_still_reaches_all_of_it(api: TestClient, alices: dict[str, str]) -> None:
    """(So the 404s above are about the key, not about ids that do not work.)"""
    for method, template in sorted(OWNED):
        if method == "GET" and not template.endswith(("/report", "/report.html")):  # (no report before stage 7)
            response = api.get(_fill(template, alices), headers=auth())
            assert response.status_code == 200, (template, response.status_code, response.text[:200])
    assert api.post(f"/v1/runs/{alices['run_id']}/cancel", headers=auth()).status_code == 200
    assert api.post(f"/v1/runs/{alices['run_id']}/resume", headers=auth()).json()["status"] == "queued"
    for method, path in sorted(LISTS):
        assert set(alices.values()) & _ids_in(api.request(method, path, headers=auth()).json())
