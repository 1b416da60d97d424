"""Fuzzing the API from its own OpenAPI schema: no request makes it fail (5xx), hang, or answer off its schema.

schemathesis reads /openapi.json of a real API process (uvicorn on loopback; SQLite and PostgreSQL) and, for each
of its 21 operations, generates up to 50 requests that fit the schema and 50 that break it, all sent with alice's
key. Every answer is checked: no 5xx; status code, content type, headers and body as declared; schema-valid reads
accepted (2xx or 404), invalid input refused with a 4xx; an answer within 10 s. Path parameters and the ids of a
run request are often the real ids of a seeded constitution, prompt set, run and checkpoint (so requests get past
the 404s into the routes), and strings are often classic troublemakers (NUL, "~user", over-long, path tricks).
Generation is derandomized: the same requests on every run. schemathesis never puts control characters in a path,
so test_nul_characters_and_odd_model_names_get_a_4xx sends those requests itself. JSON has no infinity or NaN and
schemathesis generates none, so a body hook (`_trouble`) also sends, besides each generated body of a create
operation, that body with a number JSON cannot hold as a double (1e999, Infinity, NaN, also as strings) raw in a
float field of the run config, and with a value nested up to 100,000 levels deep.

Bugs it found, now fixed:
- `skip` (GET /v1/runs, /v1/prompt-sets) or `after` (GET /v1/runs/{id}/events) above 2^63 - 1: 500 (SQLite
  OverflowError; PostgreSQL bigint out of range); now 422, and the schema declares the maximum.
- A NUL character in a run request's constitution_id or a prompt set's name: 500 on PostgreSQL, which cannot
  compare with or store NUL (and so in any id in a path, or an events `stage` filter); such an id is now 404 like
  any unknown id, a name or stage 422 (the schema declares: no NUL).
- policy_model / judge_model "~nobody", "~<NUL>" or a name too long for a path: 500 (Path.expanduser / is_dir
  raised); now 422 unknown model. An empty name is 422 "empty model name" (was "  is a folder without config.json").
- A JSON body that is not UTF-8 (POST /v1/runs), or a multipart form that cannot be parsed (POST /v1/prompt-sets,
  /v1/constitutions): undeclared 400 "There was an error parsing the body" / "Invalid multipart data."; now 422
  with the reason.
- Every 422 was declared as FastAPI's HTTPValidationError (`detail` a list of objects), which the API never sends:
  the schema now declares the project's ErrorPublic (`{"detail": str, "errors": [str]}`) for every error answer.
- GET /v1/runs/{id}/report.html declared its 404 body as text/html; it is JSON (ErrorPublic).
- GET /v1/checkpoints/{id}/files/{path} declared a JSON 200; it serves the file's bytes, typed by its name (*/*).
- A run config with 1e999 or Infinity in a float field (kl_coef, cliprange, ...): 500, and the run was stored with
  null there, so every later GET /v1/runs of its owner was a 500 too (issue 16); now 422, every float finite.

    python -m pytest tests/api/test_fuzz.py -q
"""

from __future__ import annotations

import json
import typing
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import BaseModel
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from service_fixtures import KEYS, REPO, TINY_RUN, Service, auth, error_of, register_checkpoint

MAX_EXAMPLES = 50  # generated requests per operation and mode (valid / invalid); fewer where fewer exist
REQUEST_TIMEOUT_S = 10.0  # a request not answered by then is a hang: the test fails on it
# Strings that have broken web services before: NUL, home-folder and parent-folder paths, over-long, blank.
TROUBLE = ["\x00", "a\x00b", "~", "~nobody-here", "~\x00", "x" * 300, "", " ", "..", "../../etc/passwd", "%00", "\\"]
ID_TROUBLE = ["\x00", "run-\x00", "~", "x" * 300, "%00", "\\"]  # (no "", "..": they would change the route)
# The create operations validate what a schema cannot say (a constitution's YAML, prompts, a run's models and
# config; a patched constitution): a request that fits the schema may still get a 422 there, so only those skip
# the acceptance check.
CREATES = "^/v1/(constitutions|prompt-sets|runs)$"
BODY_STRINGS = ("name", "policy_model", "judge_model")  # JSON body fields that also draw TROUBLE
# Numbers no double holds (1e999 reads as infinity) and the non-standard literals Python's JSON reads, raw in the body.
NON_FINITE = ["1e999", "-1e999", "Infinity", "-Infinity", "NaN", '"Infinity"', '"NaN"', '"-inf"']
DEPTHS = [50, 500, 990, 1500, 100_000]  # nesting levels: parsed, near the parser's limit, beyond it


def _float_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every float field of a config model (float, float | None, tuple[float, float])."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _float_paths(annotation, (*prefix, name))
        elif float in (annotation, *typing.get_args(annotation)):
            out.append((*prefix, name))
    return out


RAW = "__raw-json__"  # a placeholder value, replaced by raw JSON text once the body is serialised


def _raw(body: dict[str, Any], text: str) -> bytes:
    """`body` as JSON, with the RAW placeholder in it replaced by the JSON `text`."""
    return json.dumps(body).replace(f'"{RAW}"', text, 1).encode()


def _trouble(ids: dict[str, list[str]], drawn: Counter[str]) -> Callable[[Any, Any], Any]:
    """A flatmap_body hook: a create operation's generated JSON object as it is, or with a non-finite number in a
    run config's float field (on the seeded ids, so it gets past the 404s), or with a deeply nested value."""
    from rlaif.config import RunConfig

    floats = _float_paths(RunConfig)
    real = {"constitution_id": ids["constitution_id"][0], "prompt_set_id": ids["prompt_set_id"][0]}

    def non_finite(body: dict[str, Any], path: tuple[str, ...], token: str) -> bytes:
        drawn["non-finite"] += 1
        config: Any = RAW
        for part in reversed(path):  # ("ppo", "kl_coef") -> {"ppo": {"kl_coef": RAW}}
            config = {part: config}
        return _raw({**body, **real, "config": config}, f"[{token}, 0.6]" if path[-1] == "cot_clamp" else token)

    def deep(body: dict[str, Any], key: str, depth: int) -> bytes:
        drawn["deep"] += 1
        nested = '{"x":' * depth + "1" + "}" * depth
        return _raw({**body, key: [RAW] if key == "prompts" else RAW}, nested)

    def flatmap_body(context: Any, body: Any) -> Any:
        label = context.operation.label if context.operation is not None else ""
        if label not in ("POST /v1/runs", "POST /v1/prompt-sets") or not isinstance(body, dict):
            return st.just(body)  # (uploads of files and raw documents, and bodies that are no JSON object)
        key = "config" if label == "POST /v1/runs" else "prompts"
        options = [st.just(body), st.sampled_from(DEPTHS).map(lambda depth: deep(body, key, depth))]
        if label == "POST /v1/runs":
            options.append(st.builds(non_finite, st.just(body), st.sampled_from(floats), st.sampled_from(NON_FINITE)))
        return st.one_of(options)

    return flatmap_body


def _seed(service: Service, url: str) -> dict[str, list[str]]:
    """A real constitution, prompt set, run and checkpoint of alice's: the values to draw, by parameter name."""
    with httpx.Client(base_url=url, headers=auth(), timeout=REQUEST_TIMEOUT_S) as client:
        con = client.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes())
        prompts = client.post("/v1/prompt-sets", json=["fuzz one?", "fuzz two?", "fuzz three?", "fuzz four?"])
        request = {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"], "config": TINY_RUN}
        run = client.post("/v1/runs", json=request)
        assert (con.status_code, prompts.status_code, run.status_code) == (201, 201, 201), run.text
    run_id = run.json()["id"]
    checkpoint_id = register_checkpoint(service, run_id)
    return {
        "constitution_id": [con.json()["id"]],
        "prompt_set_id": [prompts.json()["id"]],
        "run_id": [run_id],
        "checkpoint_id": [checkpoint_id],
        "path": ["config.json"],
    }


def _config(ids: dict[str, list[str]]) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "headers": {"Authorization": f"Bearer {KEYS['alice']}"},
            "request-timeout": REQUEST_TIMEOUT_S,
            "dictionaries": {
                "trouble": {"values": TROUBLE},
                "prompt_set_id": {"values": ids["prompt_set_id"]},
                # Path ids: the real id as often as a troublemaker (the ones that keep the URL's shape).
                **{
                    f"{name}-or-trouble": {"values": values * len(ID_TROUBLE) + ID_TROUBLE}
                    for name, values in ids.items()
                },
            },
            "generation": {"dictionaries": {"string": {"dictionary": "trouble", "probability": 0.3}}},
            "parameters": {
                **{f"path.{name}": {"dictionary": f"{name}-or-trouble", "probability": 0.6} for name in ids},
                "body.constitution_id": {"dictionary": "constitution_id-or-trouble", "probability": 0.8},
                "body.prompt_set_id": {"dictionary": "prompt_set_id", "probability": 0.7},
                **{f"body.{name}": {"dictionary": "trouble", "probability": 0.3} for name in BODY_STRINGS},
            },
            "operations": [
                {
                    "include-method": "POST",
                    "include-path-regex": CREATES,
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
                {  # GET /v1/runs/compare (and its head-to-head): ids that fit the schema (a string) may split into
                    # fewer than 2 runs or name one twice (422 with the reason)
                    "include-method": "GET",
                    "include-path-regex": "^/v1/runs/compare(/head-to-head)?$",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
                {  # POST /v1/runs/compare/head-to-head: a real run id fits the schema, and its evaluation has not
                    # run (409 with the reason)
                    "include-method": "POST",
                    "include-path-regex": "^/v1/runs/compare/head-to-head$",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
                {  # PATCH /v1/constitutions/{id}: changes that fit the schema may name no principle, or make the
                    # result invalid (422 from the loader)
                    "include-method": "PATCH",
                    "include-path-regex": "^/v1/constitutions/",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                },
            ],
        }
    )


@pytest.mark.timeout(300)  # the whole test; it takes well under a minute per backend
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_operation_survives_fuzzing(make_service: Any, backend: str) -> None:
    service: Service = make_service(backend)
    url = service.start_api()
    ids = _seed(service, url)
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=_config(ids), timeout=REQUEST_TIMEOUT_S)
    drawn: Counter[str] = Counter()
    schema.hook("flatmap_body")(_trouble(ids, drawn))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]

    # One Hypothesis test per operation and mode, here in a loop: schemathesis.pytest.from_fixture would make them
    # subtests, but it fails under pytest 9 (it writes Item._nodeid, which pytest no longer has).
    sent: Counter[str] = Counter()
    answered: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                print_blob=False,
            )
            @hypothesis.given(case=operation.as_strategy(mode))
            def fuzz(case: Any) -> None:
                sent[case.operation.label] += 1
                response = case.call(base_url=url, headers=auth(), timeout=REQUEST_TIMEOUT_S)
                answered[(case.operation.label, response.status_code // 100)] += 1  # (counted before the checks)
                transport = {"base_url": url, "headers": auth(), "timeout": REQUEST_TIMEOUT_S}
                case.validate_response(response, headers=auth(), transport_kwargs=transport)

            try:
                fuzz()
            except Unsatisfiable:  # only string path parameters: no request can break the schema
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, FailureGroup) as exc:  # a check failed, or a request timed out
                failures.append(f"{operation.label} ({mode.value} data): {exc}")
    server_errors = sum(count for (_, klass), count in answered.items() if klass == 5)
    print(f"\nfuzz ({backend}): {sum(sent.values())} requests, {server_errors} 5xx; trouble bodies {dict(drawn)}")
    assert not failures, f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures)
    assert server_errors == 0
    assert drawn["non-finite"] > 0 and drawn["deep"] > 0, drawn
    assert set(sent) == {op.label for op in operations}
    # The seeded ids were drawn: requests got past the 404s into the routes.
    for label in ("GET /v1/runs/{run_id}", "GET /v1/checkpoints/{checkpoint_id}/files/{path}", "POST /v1/runs"):
        assert answered[(label, 2)] > 0, (label, answered)


def test_the_fixed_bugs_one_request_each(api: TestClient) -> None:
    """Each bug above, as one request (and those schemathesis cannot send: it puts no control characters in a path).
    NUL in an id: 404 not found; in a name or filter: 422, on PostgreSQL too. The rest: 422 with the reason."""
    con = api.post("/v1/constitutions", content=(REPO / "constitutions" / "minimal.yaml").read_bytes(), headers=auth())
    prompts = api.post("/v1/prompt-sets", json=["nul one?", "nul two?", "nul three?", "nul four?"], headers=auth())
    ids = {"constitution_id": con.json()["id"], "prompt_set_id": prompts.json()["id"]}
    run = api.post("/v1/runs", json={**ids, "config": TINY_RUN}, headers=auth())
    assert run.status_code == 201, run.text
    for path in ("/v1/runs/run-%00", "/v1/runs/%00/events", "/v1/constitutions/%00", "/v1/checkpoints/a%00b/download"):
        status, detail, _ = error_of(api.get(path, headers=auth()))
        assert (status, detail[-9:]) == (404, "not found"), (path, detail)
    status, detail, _ = error_of(api.post("/v1/runs", json={**ids, "constitution_id": "con-\x00"}, headers=auth()))
    assert (status, detail) == (404, "constitution 'con-\\x00' not found")

    def problems(response: Any) -> tuple[int, list[str]]:
        status, _, errors = error_of(response)
        return status, errors

    nul = "Value error, NUL characters (\\x00) are not allowed"
    events = f"/v1/runs/{run.json()['id']}/events"
    assert problems(api.get(events, params={"stage": "sft\x00"}, headers=auth())) == (422, [f"query.stage: {nul}"])
    jsonl = b'{"prompt": "q"}\n'
    upload = api.post("/v1/prompt-sets", params={"name": "a\x00"}, content=jsonl, headers=auth())
    assert problems(upload) == (422, [f"query.name: {nul}"])
    upload = api.post("/v1/prompt-sets", json={"name": "a\x00", "prompts": ["q"]}, headers=auth())
    assert problems(upload) == (422, [f"name: {nul}"])
    for skip in ("/v1/runs?skip=9223372036854775808", f"{events}?after=9223372036854775808"):
        assert problems(api.get(skip, headers=auth()))[0] == 422, skip
    for model in ("~nobody-here", "~\x00", "x" * 300):
        status, errors = problems(api.post("/v1/runs", json={**ids, "policy_model": model}, headers=auth()))
        assert status == 422 and errors[0].startswith(f"policy_model: unknown model {model!r}"), errors
    assert problems(api.post("/v1/runs", json={**ids, "judge_model": " "}, headers=auth())) == (
        422,
        ["judge_model: empty model name"],
    )
    not_utf8 = api.post("/v1/runs", content=b"\xff{}", headers={**auth(), "Content-Type": "application/json"})
    assert problems(not_utf8) == (422, ["body: invalid JSON: not UTF-8 text (byte 0)"])
    broken = {**auth(), "Content-Type": "multipart/form-data; boundary=b"}
    status, detail, _ = error_of(api.post("/v1/prompt-sets", content=b"--b\r\n[]--b--\r\n", headers=broken))
    assert (status, detail) == (422, "invalid multipart upload: Invalid multipart data.")
