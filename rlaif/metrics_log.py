"""Where a training stage's curves go: metrics.jsonl, TensorBoard event files and, when configured, MLflow.

SFT, the reward model and PPO log through one `MetricsLog`, so the three loops log the same way:

    metrics_log = MetricsLog(out_dir, "sft", cfg.sft, meta, start_step, enabled=info.is_main)  # after the resume
    metrics_log.log(metrics)   # every optimizer step (PPO: every update)
    metrics_log.close()        # after the loop

* `<stage>/metrics.jsonl`: one JSON object per step; the service copies it into events and GET /v1/runs/{id}/metrics.
* `<stage>/tensorboard/`: the same numbers as TensorBoard scalars, tagged with the metric names (`loss/train`,
  `objective/kl`, `policy/clipfrac`, `val/explained_variance`, ...), at the record's `step`:
  `tensorboard --logdir <artifact root>/runs/<run id>`. (Outside the model folder: checkpoints and their
  manifests are untouched.)
* MLflow, when the server sets RLAIF_MLFLOW_TRACKING_URI (infrastructure, like the database URL): one MLflow
  run per stage of a run, named `<run id>/<stage>` in the experiment RLAIF_MLFLOW_EXPERIMENT, with the run
  config flattened as params (`ppo.kl_coef`) and the metrics per step.

A resumed stage keeps the records up to its step state and computes the rest again. metrics.jsonl is cut back
to the step state; event files and MLflow metrics can only be appended to, so both are rebuilt from the kept
records instead: the event folder is written anew, and the stage's MLflow run is replaced by a new one. So
neither ever shows a step twice, and both always show what metrics.jsonl holds. Only rank 0 writes
(`enabled=False` on the others).

    python -c "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator as E; \
a = E('<stage folder>/tensorboard'); a.Reload(); print(a.Tags()['scalars'])"
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from torch.utils.tensorboard import SummaryWriter

from rlaif.settings import settings
from rlaif.stages import METRICS_FILE, TENSORBOARD_DIR
from rlaif.training import append_metrics, chunks, truncate_metrics

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RUN_ID_TAG, STAGE_TAG = "rlaif.run_id", "rlaif.stage"  # MLflow tags that find a stage's run again on resume
_MLFLOW_PARAMS, _MLFLOW_METRICS = 100, 1000  # the most MLflow takes per log_batch call


class MetricsLog:
    """The metric records of one training stage, to metrics.jsonl, TensorBoard and (when configured) MLflow.

    `section`/`cfg` are the stage's config section ("sft", SFTConfig): the MLflow params when `meta` (the
    checkpoint lineage) carries no `run_config`, as for a stage trained outside a run. `start_step` is the step
    of the step state the stage resumed from (0: a fresh start); `kept` holds the records it kept.
    """

    def __init__(
        self,
        out_dir: Path,
        section: str,
        cfg: BaseModel,
        meta: dict[str, Any] | None,
        start_step: int,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.kept: list[dict[str, Any]] = []
        self.writer: SummaryWriter | None = None
        self.mlflow: MlflowClient | None = None
        self.mlflow_run: str | None = None
        if not enabled:
            return
        out_dir = Path(out_dir)
        self.path = out_dir / METRICS_FILE
        self.kept = truncate_metrics(self.path, start_step)  # a resumed run rewrites what came after its step state
        # Rebuilt, not appended to: the event files of an interrupted attempt hold the steps being redone.
        shutil.rmtree(out_dir / TENSORBOARD_DIR, ignore_errors=True)
        self.writer = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR))
        meta = meta or {}
        if settings.mlflow_tracking_uri:
            run_id = str(meta.get("run_id") or out_dir.parent.name)
            params = flatten(meta.get("run_config") or {section: cfg.model_dump(mode="json")})
            self._start_mlflow(settings.mlflow_tracking_uri, settings.mlflow_experiment, run_id, out_dir.name, params)
        for record in self.kept:
            self._mirror(record)
        self._flush()

    def log(self, record: dict[str, Any]) -> None:
        """Append one step's record (it must carry `step`) everywhere."""
        if not self.enabled:
            return
        append_metrics(self.path, record)
        self._mirror(record)
        self._flush()

    def close(self) -> None:
        """Flush and close the event files; mark the MLflow run finished."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.mlflow is not None and self.mlflow_run is not None:
            self.mlflow.set_terminated(self.mlflow_run, status="FINISHED")
            self.mlflow_run = None

    # ------------------------------------------------------------ internals

    def _mirror(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        scalars = {key: float(value) for key, value in record.items() if key != "step" and _is_number(value)}
        assert self.writer is not None
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        if self.mlflow is not None and self.mlflow_run is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
            for chunk in chunks(metrics, _MLFLOW_METRICS):
                self.mlflow.log_batch(self.mlflow_run, metrics=chunk)

    def _flush(self) -> None:
        # Per step, so TensorBoard (and `watch`-ing users) see a step as soon as metrics.jsonl has it.
        assert self.writer is not None
        self.writer.flush()

    def _start_mlflow(self, uri: str, experiment: str, run_id: str, stage: str, params: dict[str, str]) -> None:
        """A new MLflow run for this stage of the run; the run of an earlier attempt (if any) is deleted."""
        if uri.startswith("file:"):
            # MLflow 3 refuses file stores unless this opt-out is set; the server's configuration asked for one.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            earlier = client.search_runs(
                [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}' and tags.`{STAGE_TAG}` = '{stage}'"
            )
            for old in earlier:  # its steps after the step state are being redone: the new run replays the rest
                client.delete_run(old.info.run_id)
            run = client.create_run(
                experiment_id, run_name=f"{run_id}/{stage}", tags={RUN_ID_TAG: run_id, STAGE_TAG: stage}
            )
            for chunk in chunks([Param(key, value) for key, value in params.items()], _MLFLOW_PARAMS):
                client.log_batch(run.info.run_id, params=chunk)
        except MlflowException as exc:
            raise ValueError(
                f"RLAIF_MLFLOW_TRACKING_URI {uri}: cannot log the {stage} stage of {run_id}: {exc}"
            ) from exc
        self.mlflow, self.mlflow_run = client, run.info.run_id
        log.info("logging %s/%s to MLflow at %s (run %s)", run_id, stage, uri, self.mlflow_run)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as dotted keys with string values: {"ppo": {"kl_coef": 0.05}} -> {"ppo.kl_coef": "0.05"}."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
