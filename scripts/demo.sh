#!/usr/bin/env bash
# The main job: set up (idempotent), then a whole run through the REST API on the embedded model:
# start the API and a worker, post the harmlessness constitution and the demo prompts, watch every stage,
# pull the aligned policy, and print base vs aligned answers and the evaluation's headline figures.
# Extra arguments go to `rlaif demo` (e.g. --set ppo.total_episodes=48).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
exec .venv/bin/rlaif demo "$@"
