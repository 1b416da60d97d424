"""A training stage of a Celery task run data-parallel: `RLAIF_TRAIN_DEVICES` local ranks under torchrun.

The worker's task keeps the lease, its heartbeat and the progress events (rlaif/service/execute.py); the stage's
`run_<stage>(ctx)` runs in the ranks, the same function as in one process or under the CLI's torchrun:

    python -m torch.distributed.run --standalone --nproc-per-node N -m rlaif.service.ranks <control folder>

The worker and the ranks talk through the control folder (a temporary folder, not part of the artifacts):

- `job.json` (worker -> ranks): run id, stage, artifact root and the run's frozen config (style guide 6).
- `progress.jsonl` (rank 0 -> worker): one line per optimizer step, `{step, total, metrics}`, read on each poll
  and handed to the task's own `on_progress` hook (so the heartbeat writes the metrics events as in one process).
- `stop` (worker -> ranks): the reason ("cancelled" / "lost") once the heartbeat says stop. Rank 0 reads it in
  its `should_stop` hook and every rank gets rank 0's answer through an all-reduce, so all ranks stop after the
  same step (a rank that stopped alone would leave the others waiting in a collective).
- `result.json` (rank 0 -> worker): the StageResult; `stopped` when the ranks stopped on request.
- `stderr.log`: torchrun's and the ranks' stderr, copied to the worker's stderr as it comes; its tail is the
  error of an attempt whose rank failed.

A stage module says whether it runs data-parallel with `data_parallel(cfg) -> str | None` (None: it does; a
string: why not); a module without one runs in one process (rlaif/stages/contract.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlaif.stages import StageResult
from rlaif.stages.contract import StageContext, StageHooks, StageStopped, StopReason

log = logging.getLogger(__name__)

JOB_FILE, PROGRESS_FILE, STOP_FILE, RESULT_FILE, STOPPED_FILE, STDERR_FILE = (
    "job.json", "progress.jsonl", "stop", "result.json", "stopped", "stderr.log",
)  # fmt: skip
POLL_S = 0.5
STDERR_TAIL_CHARS = 4000
STOP_CODES: dict[StopReason | None, int] = {None: 0, "cancelled": 1, "lost": 2}


def single_process_reason(module: Any, ctx: StageContext) -> str | None:
    """Why this stage runs in one process even with more devices (None: it runs data-parallel)."""
    check = getattr(module, "data_parallel", None)
    if check is None:
        return f"stage {ctx.name} ({ctx.spec.kind}) runs in one process"
    return check(ctx.cfg)


def run_ranks(ctx: StageContext, devices: int) -> StageResult:
    """Run `ctx`'s stage on `devices` local ranks and wait for it, relaying rank 0's steps to `ctx.hooks` and a
    stop from them to the ranks. Raises StageStopped when the ranks stopped on request, RuntimeError (with the
    ranks' stderr tail) when one failed."""
    with tempfile.TemporaryDirectory(prefix=f"rlaif-{ctx.run_id}-{ctx.name}-") as folder:
        control = Path(folder)
        job = {
            "run_id": ctx.run_id,
            "stage": ctx.name,
            "root": str(ctx.store.root),
            "config": ctx.cfg.model_dump_json(),
        }
        (control / JOB_FILE).write_text(json.dumps(job), encoding="utf-8")
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(devices),
            "-m", "rlaif.service.ranks", str(control),
        ]  # fmt: skip
        log.info("run %s: stage %s on %d data-parallel ranks: %s", ctx.run_id, ctx.name, devices, " ".join(command))
        with (control / STDERR_FILE).open("wb") as stderr:
            # (its own session: a cleanup signal reaches torchrun and every rank, and nothing else)
            proc = subprocess.Popen(command, stdout=stderr, stderr=stderr, start_new_session=True)
        relay = _Relay(control, ctx.hooks)
        try:
            while proc.poll() is None:
                relay.poll()
                time.sleep(POLL_S)
            relay.poll()
        finally:
            if proc.poll() is None:  # the task itself was interrupted (time limit, worker shutdown)
                _stop_group(proc)
        if proc.returncode != 0:
            tail = (control / STDERR_FILE).read_text(encoding="utf-8", errors="replace")[-STDERR_TAIL_CHARS:]
            raise RuntimeError(
                f"stage {ctx.name}: a data-parallel rank failed (torchrun exit {proc.returncode}); stderr ends:\n{tail}"
            )
        if (control / STOPPED_FILE).is_file():
            raise StageStopped((control / STOPPED_FILE).read_text(encoding="utf-8"))  # type: ignore[arg-type]
        return StageResult.model_validate_json((control / RESULT_FILE).read_text(encoding="utf-8"))


class _Relay:
    """The worker's side of the control folder: new progress lines to the hooks, a stop to the ranks, the ranks'
    stderr to the worker's."""

    def __init__(self, control: Path, hooks: StageHooks) -> None:
        self.control, self.hooks = control, hooks
        self._progress_at = self._stderr_at = 0
        self._stop_sent = False

    def poll(self) -> None:
        progress = self.control / PROGRESS_FILE
        if progress.is_file():
            with progress.open("rb") as f:
                f.seek(self._progress_at)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # (a line being written is read next time)
            self._progress_at += len(complete)
            for line in complete.decode("utf-8").splitlines():
                record = json.loads(line)
                if self.hooks.on_progress is not None:
                    self.hooks.on_progress(record["step"], record["total"], record["metrics"])
        with (self.control / STDERR_FILE).open("rb") as f:
            f.seek(self._stderr_at)
            data = f.read()
        self._stderr_at += len(data)
        if data:
            sys.stderr.write(data.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        reason = self.hooks.should_stop() if self.hooks.should_stop is not None else None
        if reason is not None and not self._stop_sent:
            (self.control / STOP_FILE).write_text(reason, encoding="utf-8")
            self._stop_sent = True


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to torchrun and its ranks (torchrun passes it on), SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- the ranks' side


def _rank_hooks(control: Path) -> StageHooks:
    """Rank 0 writes each step to progress.jsonl; every rank stops when rank 0 has seen the stop file."""
    from rlaif.distributed import all_reduce_max, init_distributed

    info = init_distributed()
    reasons = {code: reason for reason, code in STOP_CODES.items()}

    def on_progress(step: int, total: int | None, metrics: dict[str, float]) -> None:
        if info.is_main:
            with (control / PROGRESS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "total": total, "metrics": metrics}) + "\n")

    def should_stop() -> StopReason | None:
        seen = (control / STOP_FILE).read_text(encoding="utf-8") if (control / STOP_FILE).is_file() else None
        code = STOP_CODES.get(seen, 1) if info.is_main and seen else 0  # type: ignore[arg-type]
        return reasons[all_reduce_max(code, info)]

    return StageHooks(on_progress=on_progress, should_stop=should_stop)


def main(control: Path) -> None:
    """One rank: the job's stage through its `run_<stage>(ctx)`, with the control folder's hooks."""
    import importlib

    from rlaif.config import RunConfig
    from rlaif.distributed import init_distributed, shutdown_distributed
    from rlaif.peak_memory import records_peak_rss
    from rlaif.settings import apply_process_defaults
    from rlaif.store import ArtifactStore, atomic_write_text

    apply_process_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = json.loads((control / JOB_FILE).read_text(encoding="utf-8"))
    info = init_distributed()
    cfg = RunConfig.model_validate_json(job["config"])
    ctx = StageContext.of(
        ArtifactStore(Path(job["root"])), job["run_id"], job["stage"], cfg=cfg, hooks=_rank_hooks(control)
    )
    module = importlib.import_module(f"rlaif.stages.{ctx.spec.definition.module}")
    try:
        result: StageResult = records_peak_rss(getattr(module, ctx.spec.definition.run))(ctx)
    except StageStopped as exc:
        log.warning("rank %d: stage %s stopped: %s", info.rank, ctx.name, exc.reason)
        if info.is_main:
            atomic_write_text(control / STOPPED_FILE, exc.reason)
        shutdown_distributed()
        return
    if info.is_main:
        result.extra["data_parallel_ranks"] = info.world_size
        atomic_write_text(control / RESULT_FILE, result.model_dump_json())
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
