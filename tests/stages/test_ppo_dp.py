"""Data-parallel PPO for real: two gloo ranks under torchrun train the weights of one process on the same global
batch, write like one process, and resume after losing a rank.

The run (tests/stages/ppo_dp_script.py) is float32 with a deterministic rule-based score function. The two runs
are equal by construction, not by statistics: every episode's sampling is seeded by its row in the update's
batch, the episodes are gathered before whitening (global statistics), the minibatches are those of one process
and each rank runs whole micro-batches of them (micro-batch r of each minibatch on rank r), and the gradients are
summed. What may differ is float rounding: matrix products over a rank's 4 rows instead of 8 (and over 1-token
responses on rank 1 where one process pads them to 8), and the order of the gradient sum (PPO-ptx's gradient is
added on rank 0 before rank 1's micro-batch, in one process after it).

    python -m pytest tests/stages/test_ppo_dp.py -m slow
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ppo_dp_script import CONFIG, eos_prone_model, run
from safetensors.torch import load_file

from rlaif.config import PPOConfig
from rlaif.stages import TENSORBOARD_DIR
from rlaif.stages.ppo import _rank_split
from rlaif.store import verify_manifest

SCRIPT = Path(__file__).with_name("ppo_dp_script.py")
# One optimizer step moves a weight by about lr (Adam's step is ~lr x sign(gradient) where |gradient| >> eps),
# here 3e-4; a real fault (local whitening statistics, a missing gradient sum, rank-dependent sampling) changes
# the gradients by O(1) and the weights by O(lr) within the first update. Rounding gives float32 ulps of the
# weights (1.2e-7 at 1.0, the norm weights) plus Adam's amplification where a gradient is near eps = 1e-5: a
# gradient error of ~1e-7 relative x ~1e-2 moves a step by lr x 1e-9 / 1e-5 = 3e-8, x 12 optimizer steps (3
# updates x 2 epochs x 2 minibatches) ~4e-7. 1e-5 is 25x that and 1/30 of one step. (Measured: 1.2e-7.)
WEIGHT_ATOL = 1e-5


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_torchrun(model: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), str(SCRIPT), str(model), str(out), *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(job: subprocess.Popen[str]) -> tuple[int, str]:
    """(exit status, stderr) of a torchrun job."""
    _, stderr = job.communicate(timeout=300)
    return job.returncode, stderr


def _torchrun(model: Path, out: Path, *extra: str) -> tuple[int, str]:
    return _wait(_start_torchrun(model, out, *extra))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    verify_manifest(out / "model")
    return load_file(out / "model" / "model.safetensors")


def test_the_batch_sizes_must_divide_over_the_ranks() -> None:
    # 6 prompts x 1 sample = 6 episodes: 3 per rank on 2 ranks, but not on 4.
    six = PPOConfig(total_episodes=6, prompts_per_step=6, num_minibatches=1, micro_batch_size=1)
    assert _rank_split(six, 2).per_rank == 3
    with pytest.raises(ValueError, match=r"ppo.batch_size 6 is not divisible by world size 4 \(ppo.batch_size = "):
        _rank_split(six, 4)
    # 8 episodes in 4 minibatches of 2: one episode per rank and minibatch on 2 ranks, none on 4.
    with pytest.raises(ValueError, match="ppo.minibatch_size 2 .* is not divisible by world size 4"):
        _rank_split(PPOConfig(prompts_per_step=8, num_minibatches=4, micro_batch_size=1), 4)
    # The defaults (8 episodes, 2 minibatches of 4, micro-batches of 4) leave rank 1 without a micro-batch.
    with pytest.raises(ValueError, match="= 1 micro-batches per minibatch .* a divisor of 2"):
        _rank_split(PPOConfig(), 2)
    assert _rank_split(PPOConfig(micro_batch_size=2), 2) == (2, 4)


@pytest.mark.slow
def test_two_gloo_ranks_train_the_weights_of_one_process_and_resume(tiny_model: str, tmp_path: Path) -> None:
    model = eos_prone_model(tmp_path / "eos-prone")
    job = _start_torchrun(model, tmp_path / "two")  # starts its ranks while this process trains alone
    torch.set_num_threads(1)
    one_result = run(model, tmp_path / "one")
    status, stderr = _wait(job)
    assert status == 0, stderr[-4000:]

    # Rank 1's episodes of update 1 (rows 4-7) all stopped at their first token while rank 0 sampled a full-length
    # one: the ranks' responses had different widths, which the gather padded.
    first = [s for s in _rows(tmp_path / "one" / "samples.jsonl") if s["step"] == 1]
    assert all(s["finished"] for s in first[4:]) and not all(s["finished"] for s in first[:4])

    # The same episodes (text, finished), scores to rounding, the same metrics, and the same weights.
    one_samples, two_samples = _rows(tmp_path / "one" / "samples.jsonl"), _rows(tmp_path / "two" / "samples.jsonl")
    assert len(two_samples) == CONFIG.total_episodes  # written once, by rank 0
    for a, b in zip(one_samples, two_samples, strict=True):
        assert (a["step"], a["prompt"], a["response"], a["finished"]) == (b["step"], b["prompt"], b["response"],
                                                                          b["finished"])  # fmt: skip
        assert b["score"] == pytest.approx(a["score"], abs=1e-6) and b["kl"] == pytest.approx(a["kl"], abs=1e-5)
    one, two = _rows(tmp_path / "one" / "metrics.jsonl"), _rows(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:  # KL of policy vs reference: sums of rounding-sized differences, so an absolute bound
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert two[-1]["objective/kl_coef"] != CONFIG.kl_coef  # the adaptive controller moved, on the global KL
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    initial = load_file(model / "model.safetensors")
    assert max((w1[k] - initial[k]).abs().max().item() for k in w1) > 30 * WEIGHT_ATOL  # PPO moved the weights
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < WEIGHT_ATOL, worst
    assert json.loads((tmp_path / "two" / "result.json").read_text())["counts"] == one_result.counts

    # Only rank 0 wrote: one event file, no resume states or temporary folders left.
    assert len(list((tmp_path / "two" / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
    assert not [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".") or p.name in ("steps", "best")]

    # Rank 1 is lost in update 3's rollout, after the step state of update 2: torchrun stops rank 0 too. The
    # restarted job resumes on both ranks from that state and ends exactly where the uninterrupted job did.
    status, stderr = _torchrun(model, tmp_path / "resumed", "--crash-in-update", "3")
    assert status != 0 and "rank 1 lost in update 3" in stderr
    assert [r["step"] for r in _rows(tmp_path / "resumed" / "metrics.jsonl")] == [1, 2]
    assert (tmp_path / "resumed" / "steps" / "step-00000002").is_dir()
    status, stderr = _torchrun(model, tmp_path / "resumed")
    assert status == 0, stderr[-4000:]
    assert _rows(tmp_path / "resumed" / "metrics.jsonl") == two
    assert _rows(tmp_path / "resumed" / "samples.jsonl") == two_samples
    resumed = _weights(tmp_path / "resumed")
    assert all(torch.equal(resumed[k], w2[k]) for k in w2)
