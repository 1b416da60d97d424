#!/usr/bin/env bash
# The main job: set up (idempotent), then run the demo on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
source "${RLAIF_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
exec rlaif critique --constitution harmless --prompts examples/demo_prompts.jsonl --limit 3 "$@"
