#!/usr/bin/env bash
# The PPO benchmark rows on a CUDA GPU, within 10 minutes, with whatever torch / vllm / trl the machine has:
# full PPO, LoRA-PPO, LoRA-PPO with vLLM rollouts (when vllm imports) and TRL's RLOOTrainer (when trl imports),
# printed as bench/bench_ppo.py prints them (one line per row, then the ratios). Exits 2 with a message when torch
# sees no CUDA device (a dry run then still shows the rows): the CPU figures are bench_ppo.py's own (bench/README.md).
#
#   bench/gpu_check.sh                 # from the repository root, with rlaif importable (pip install -e . or PYTHONPATH=.)
#   bench/gpu_check.sh --dry-run       # print the check and the bench_ppo.py command, run nothing
#   PYTHON=/path/to/venv/bin/python STEPS=4 RESPONSE_LENGTH=96 NO_CHECKPOINTING=0 bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
STEPS=${STEPS:-4}                     # timed steps per row, after one warm-up step
RESPONSE_LENGTH=${RESPONSE_LENGTH:-96}
MODEL=${MODEL:-smollm2-135m-instruct}
# NO_CHECKPOINTING=1: gradient checkpointing off in every row, for a transformers without the API ppo.py calls
# (the vLLM venv's 5.19; bench/README.md, "PPO with vLLM rollouts")
NO_CHECKPOINTING=${NO_CHECKPOINTING:-0}
LIMIT_S=${LIMIT_S:-600}               # the whole check, all rows: bench_ppo.py is stopped after this
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "gpu_check.sh: unknown argument $1 (use --dry-run or --help)" >&2; exit 64 ;;
esac

# One probe for everything the row list depends on: the CUDA device (or why there is none), vllm, trl.
if ! probe=$("$PYTHON" - <<'EOF'
import importlib.util
import sys

try:
    import torch
except ImportError as error:
    sys.exit(f"torch does not import ({error})")
if torch.cuda.is_available():
    print(f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})")
else:
    print(f"NO-CUDA torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda or 'no, a CPU build'})")
print("vllm" if importlib.util.find_spec("vllm") else "")
print("trl" if importlib.util.find_spec("trl") and importlib.util.find_spec("datasets") else "")
EOF
); then
  echo "gpu_check.sh: cannot probe the machine with $PYTHON" >&2
  exit 2
fi
device=$(sed -n 1p <<<"$probe")
has_vllm=$(sed -n 2p <<<"$probe")
has_trl=$(sed -n 3p <<<"$probe")
if [[ $device == NO-CUDA* ]]; then
  echo "gpu_check.sh: this check needs a CUDA GPU, and ${device#NO-CUDA }." >&2
  if [[ $DRY_RUN == 0 ]]; then
    echo "gpu_check.sh: nothing was run. The CPU figures come from python bench/bench_ppo.py (bench/README.md)." >&2
    exit 2
  fi
fi

rows=(rlaif-ppo rlaif-ppo-lora)
[[ -n $has_vllm ]] && rows+=(rlaif-ppo-lora-vllm) || echo "gpu_check.sh: vllm does not import: no vLLM-rollout row" >&2
[[ -n $has_trl ]] && rows+=(trl-rloo) || echo "gpu_check.sh: trl (or datasets) does not import: no TRL RLOO row" >&2

command=("$PYTHON" bench/bench_ppo.py --model "$MODEL" --steps "$STEPS" --response-length "$RESPONSE_LENGTH"
  --only "${rows[@]}")
[[ $NO_CHECKPOINTING == 1 ]] && command+=(--no-checkpointing)
echo "gpu_check.sh: ${device#NO-CUDA }; rows: ${rows[*]}"
echo "gpu_check.sh: ${command[*]}  (stopped after ${LIMIT_S} s)"
if [[ $DRY_RUN == 1 ]]; then
  echo "gpu_check.sh: dry run, nothing started"
  exit 0
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
start=$(date +%s)
status=0
timeout --kill-after=10 "$LIMIT_S" "${command[@]}" || status=$?
if [[ $status == 124 || $status == 137 ]]; then
  echo "gpu_check.sh: bench_ppo.py ran past ${LIMIT_S} s; the rows printed above are those that finished" >&2
fi
echo "gpu_check.sh: done in $(($(date +%s) - start)) s, exit $status"
exit "$status"
