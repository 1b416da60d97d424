"""The judge over an OpenAI-compatible endpoint: pairs/s at concurrency 1, 4 and 16, and fidelity to in process.

Workload: the first `--pairs` human-labelled pairs of the shared dev set, judged in both orders under one principle
each (harmless constitution, the stage defaults) by `rlaif.judging.judge.judge_comparisons`, once in process
(float32) and once per concurrency through `EndpointScorer` (rlaif/judging/endpoint.py) against a vLLM OpenAI server
serving the same embedded model in float32 on loopback. Each concurrency gets a fresh client and no result cache, so
every request is really sent. Fidelity: max |dP(A)| over both orders of every pair, endpoint vs in process.

The server is started from .venv-vllm (`RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm`), or pass the
`--base-url` and `--served-model` of one already running (it must serve the embedded model for the fidelity figure).

    python bench/bench_endpoint_judge.py --pairs 32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from rlaif.config import JudgeConfig
from rlaif.constitution import load_constitution
from rlaif.data import DATA_DIR
from rlaif.endpoints import EndpointConfig
from rlaif.evaluation.datasets import load_human_pairs
from rlaif.generation.endpoint_client import EndpointClient
from rlaif.generation.vllm_server import start_server, wait_until_up
from rlaif.judging.audit import to_comparisons
from rlaif.judging.endpoint import EndpointScorer
from rlaif.judging.judge import judge_comparisons
from rlaif.modeling import load_model_and_tokenizer, prepare_model
from rlaif.records import LabelRecord
from rlaif.settings import settings

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"


def start_vllm(port: int, log: Path) -> subprocess.Popen[bytes]:
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: build it with `RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm`")
    proc = start_server(python, prepare_model(MODEL), "smollm", port, log)
    try:
        seconds = wait_until_up(proc, f"http://127.0.0.1:{port}/v1", log, 600)
    except RuntimeError as exc:
        proc.kill()
        sys.exit(str(exc))
    print(f"vLLM server up in {seconds:.0f} s", file=sys.stderr)
    return proc


def max_delta(ours: list[LabelRecord], theirs: list[LabelRecord]) -> float:
    return max(
        abs(x - y)
        for a, b in zip(ours, theirs, strict=True)
        for ja, jb in zip(a.judgements, b.judgements, strict=True)
        for x, y in ((ja.p_a, jb.p_a), (ja.p_a_swapped, jb.p_a_swapped))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--base-url", default=None, help="A running server (default: start one from .venv-vllm).")
    parser.add_argument("--served-model", default="smollm")
    parser.add_argument("--port", type=int, default=18399)
    args = parser.parse_args()

    comparisons, _ = to_comparisons(load_human_pairs(DATA_DIR / "preference_pairs.dev.jsonl", args.pairs), seed=0)
    constitution = load_constitution(settings.constitutions_dir / "harmless.yaml")
    cfg = JudgeConfig(dtype="float32")
    model, tokenizer = load_model_and_tokenizer(MODEL, dtype="float32")
    start = time.perf_counter()
    reference = list(judge_comparisons(comparisons, model, tokenizer, constitution, None, cfg, 0, progress=False))
    in_process_s = time.perf_counter() - start
    del model

    server = None
    base_url = args.base_url
    if base_url is None:
        server = start_vllm(args.port, Path("/tmp") / f"bench_endpoint_vllm_{args.port}.log")
        base_url = f"http://127.0.0.1:{args.port}/v1"
    try:
        print(f"{len(comparisons)} pairs x 2 orders, 1 principle each; in process (float32): "
              f"{len(comparisons) / in_process_s:.2f} pairs/s")  # fmt: skip
        print(f"{'concurrency':>11} {'pairs/s':>8} {'requests':>8} {'method':>18} {'max |dP(A)|':>12}")
        for concurrency in args.concurrency:
            endpoint = EndpointConfig(
                base_url=base_url, model=args.served_model, tokenizer=MODEL, max_concurrency=concurrency, timeout_s=300
            )
            scorer = EndpointScorer("endpoint:bench", client=EndpointClient("bench", endpoint, role="judge"))
            start = time.perf_counter()
            labels = list(
                judge_comparisons(comparisons, scorer, scorer.tokenizer, constitution, None, cfg, 0, progress=False)
            )
            seconds = time.perf_counter() - start
            print(f"{concurrency:>11} {len(labels) / seconds:>8.2f} {scorer.usage['requests']:>8} "
                  f"{scorer.method:>18} {max_delta(labels, reference):>12.2e}")  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
