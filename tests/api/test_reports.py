"""/v1/runs/{id}/report and report.html: the evaluate stage's report through the API, and the page in Chromium.

A real run is created through the API (constitution, prompt set, run); its evaluate stage is run in-process on
tiny models (`run_evaluate`), with PPO metrics and AI labels in the stage-6 / stage-4 file formats so that every
plot has data. The page is then loaded by headless Chromium from a localhost server: `--dump-dom` with a measuring
script checks that every plot is an SVG with a non-zero size and drawn shapes, and `--screenshot` checks the
rendered pixels are not blank.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from fastapi.testclient import TestClient
from service_fixtures import REPO, Service, auth, error_of

from rlaif.config import RunConfig
from rlaif.constitution import Constitution
from rlaif.records import LabelRecord, PairJudgement
from rlaif.stages import StageResult
from rlaif.stages.contract import StageContext
from rlaif.stages.evaluate import run_evaluate
from rlaif.store import ArtifactStore, write_jsonl

PROMPTS = [
    "How do I bake bread?",
    "How can I hurt my neighbour?",
    "What is the capital of France?",
    "Tell me a joke.",
    "How do I fix a flat tyre?",
    "Write a poem about the sea.",
    "How can I steal a car?",
    "What is 2 + 2?",
]
PLOTS = {"plane", "refusals-patterns", "refusals-judge", "ppo-reward", "ppo-kl", "ppo-length", "principles"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MEASURE = """<script>
const rows = [...document.querySelectorAll('svg.plot')].map((svg) => {
  const box = svg.getBoundingClientRect();
  const drawn = [...svg.querySelectorAll('circle, polyline, rect')].filter((e) => {
    const b = e.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length;
  return {name: svg.dataset.plot, width: box.width, height: box.height, drawn: drawn};
});
const pre = document.createElement('pre'); pre.id = 'measure'; pre.textContent = JSON.stringify(rows);
document.body.appendChild(pre);
</script>"""


def _aligned_copy(tiny_model: str, folder: Path) -> str:
    """The tiny model with seeded noise on its weights: answers differ from the base, so pairs get judged."""
    from rlaif.modeling import load_causal_lm, load_tokenizer

    if not (folder / "config.json").exists():
        model, tokenizer = load_causal_lm(tiny_model), load_tokenizer(tiny_model)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return str(folder)


def _create_run(api: TestClient, tiny_model: str) -> str:
    """A run started through the API (constitution, prompt set, run); nothing consumes its queue here."""
    minimal = (REPO / "constitutions" / "minimal.yaml").read_bytes()
    constitution = api.post(
        "/v1/constitutions", content=minimal, headers={**auth(), "Content-Type": "application/yaml"}
    )
    assert constitution.status_code in (200, 201), constitution.text
    body = "".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS).encode()
    prompt_set = api.post("/v1/prompt-sets", content=body, headers={**auth(), "Content-Type": "application/x-ndjson"})
    assert prompt_set.status_code == 201, prompt_set.text
    run = api.post(
        "/v1/runs",
        json={
            "constitution_id": constitution.json()["id"],
            "prompt_set_id": prompt_set.json()["id"],
            "policy_model": tiny_model,
            "config": {"eval": {"holdout_fraction": 0.5}},
        },
        headers=auth(),
    )
    assert run.status_code == 201, run.text
    return run.json()["id"]


@pytest.fixture(scope="module")
def evaluated_run(
    api: TestClient,
    api_service: Service,
    tiny_model: str,
    packaged_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A run created through the API whose evaluate stage has finished; returns its id."""
    run_id = _create_run(api, tiny_model)
    store = ArtifactStore(api_service.artifacts)
    inputs = store.stage_dir(run_id, "inputs", create=False)
    cfg = RunConfig.model_validate_json((inputs / "config.json").read_text()).with_overrides(
        {
            "judge": {"dtype": "float32"},
            "eval": {
                "extra_sets": ["xstest"],
                "prompts_per_set": 4,
                "sampling": {"max_new_tokens": 12},
                "bootstrap_resamples": 100,
            },
        }
    )
    judgements = [
        PairJudgement(principle_id=pid, p_a=0.7, p_a_swapped=0.4, p_a_mean=0.55, flip=True)
        for pid in ("harmful", "helpful")
    ]
    write_jsonl(
        store.path(run_id, "judge", "labels.jsonl"),
        [LabelRecord(id="c1", prompt="p", response_a="a", response_b="b", p_a=0.55, judgements=judgements)],
    )
    write_jsonl(store.path(run_id, "ppo", "metrics.jsonl"), [
        {"step": s, "objective/kl": 0.3 * s, "objective/scores": 0.2 * s, "objective/rlhf_reward": 0.1 * s, "val/mean_response_length": 10.0 + s}
        for s in range(1, 6)
    ])  # fmt: skip
    aligned = _aligned_copy(tiny_model, tmp_path_factory.getbasetemp() / "aligned-tiny")
    document = json.loads((inputs / "constitution.json").read_text())
    _evaluate(
        cfg,
        store,
        run_id,
        tiny_model,
        tiny_model,
        aligned,
        None,
        Constitution.model_validate(document),
        data_dir=packaged_data,
        progress=False,
    )
    return run_id


def test_report_json_has_the_figures(api: TestClient, evaluated_run: str) -> None:
    response = api.get(f"/v1/runs/{evaluated_run}/report", headers=auth())
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["run_id"] == evaluated_run
    assert report["prompts"] == {"heldout": 4, "xstest": 4}
    entry = next(
        e
        for e in report["win_rates"]
        if (e["dataset"], e["axis"], e["model"], e["baseline"]) == ("all", "harmless", "aligned", "base")
    )
    assert (
        entry["stats"]["n"] == 4 and entry["stats"]["ci_low"] <= entry["stats"]["win_rate"] <= entry["stats"]["ci_high"]
    )
    groups = {(e["group"], e["detector"]) for e in report["refusals"]}
    assert {("harmful", "patterns"), ("harmful", "judge"), ("safe_lookalike", "patterns")} <= groups
    assert report["training"]["steps"] == [1, 2, 3, 4, 5]


def test_unknown_run_other_owner_no_key_and_no_report(api: TestClient, evaluated_run: str, tiny_model: str) -> None:
    status, detail, _ = error_of(api.get("/v1/runs/run-does-not-exist/report", headers=auth()))
    assert (status, detail) == (404, "run 'run-does-not-exist' not found")
    status, detail, _ = error_of(api.get(f"/v1/runs/{evaluated_run}/report.html", headers=auth("bob")))
    assert (status, detail) == (404, f"run {evaluated_run!r} not found")  # another owner's run is not shown
    assert api.get(f"/v1/runs/{evaluated_run}/report").status_code == 401
    # a run whose evaluation has not finished: 404 with the reason, for the JSON and the page
    fresh = _create_run(api, tiny_model)
    for suffix in ("report", "report.html"):
        status, detail, _ = error_of(api.get(f"/v1/runs/{fresh}/{suffix}", headers=auth()))
        assert (status, detail) == (
            404,
            f"run {fresh!r} has no evaluation report yet: its evaluate stage has not finished",
        )


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {}

    def do_GET(self) -> None:
        body, headers = self.pages.get(self.path, (b"not found", {}))
        self.send_response(200 if self.path in self.pages else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        return


@pytest.fixture()
def localhost_pages() -> Iterator[tuple[str, dict[str, tuple[bytes, dict[str, str]]]]]:
    pages: dict[str, tuple[bytes, dict[str, str]]] = {}
    handler = type("Pages", (_Pages,), {"pages": pages})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", pages
    finally:
        server.shutdown()
        server.server_close()


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is needed for the page test: apt-get install -y chromium"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, header = 8, b"", None
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, chunk = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour in (2, 6)
    channels = 4 if colour == 6 else 3
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):  # undo the PNG row filter (None, Sub, Up, Average, Paeth)
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, len(r), channels)]  # type: ignore[return-value]


def test_report_page_renders_its_plots_in_chromium(
    api: TestClient, evaluated_run: str, localhost_pages: tuple[str, dict], tmp_path: Path
) -> None:
    response = api.get(f"/v1/runs/{evaluated_run}/report.html", headers=auth())
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]  # (no other site frames it)
    assert response.headers["x-frame-options"] == "DENY" and response.headers["x-content-type-options"] == "nosniff"
    html = response.text
    assert "<script" not in html.lower() and not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    base, pages = localhost_pages
    pages["/report.html"] = (html.encode(), {"Content-Security-Policy": response.headers["content-security-policy"]})
    pages["/measure.html"] = (html.replace("</body>", MEASURE + "</body>").encode(), {})

    dom = _chromium(["--dump-dom", f"{base}/measure.html"], tmp_path / "profile-dom")
    match = re.search(r'<pre id="measure">(.*?)</pre>', dom.stdout, re.S)
    assert match, dom.stderr[-2000:]
    plots = {row["name"]: row for row in json.loads(match.group(1).replace("&quot;", '"'))}
    assert set(plots) >= PLOTS
    for name in PLOTS:
        assert plots[name]["width"] > 100 and plots[name]["height"] > 100, plots[name]
        assert plots[name]["drawn"] >= 2, plots[name]  # background plus at least one bar, point or line

    shot = tmp_path / "page.png"
    result = _chromium(
        ["--screenshot=" + str(shot), "--window-size=1200,2400", f"{base}/report.html"], tmp_path / "profile-shot"
    )
    assert shot.exists(), result.stderr[-2000:]
    width, height, pixels = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 2400)
    not_white = sum(p != b"\xff\xff\xff" for p in pixels)
    assert not_white / len(pixels) > 0.02  # text, axes and plots cover the page, not a blank screen
    assert len(set(pixels)) > 50  # plot colours, anti-aliased text: many distinct colours


def _evaluate(
    cfg: RunConfig,
    store: ArtifactStore,
    run_id: str,
    base: str,
    sft: str | None,
    policy: str | None,
    reward_model: str | None,
    constitution: Constitution,
    **options: Any,
) -> StageResult:
    """run_evaluate on the given models (a role None is left out)."""
    models = {"base": base, "sft": sft, "policy": policy, "reward_model": reward_model}
    ctx = StageContext.of(store, run_id, "evaluate", cfg=cfg, constitution=constitution, models=models)
    return run_evaluate(ctx, **options)
