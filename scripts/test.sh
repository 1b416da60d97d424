#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then the whole test suite against real Redis and real models.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
source "${RLAIF_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
start=$(date +%s)
ruff check .
ruff format --check .
markers="not vllm"
python -c "import vllm" >/dev/null 2>&1 && markers=""
python -m pytest ${markers:+-m "$markers"} "$@"
echo "[test] passed in $(($(date +%s) - start)) s"
