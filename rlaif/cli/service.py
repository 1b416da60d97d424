"""`rlaif serve | worker | submit | watch | pull | delete | compare | demo`: run the service and talk to it over HTTP.

    rlaif serve                                   # the REST API (RLAIF_API_KEYS="key:owner"); see also `rlaif db`
    rlaif worker -Q generate,judge                # a Celery worker for two queues
    rlaif submit --constitution harmless --prompts examples/demo_prompts.jsonl --set ppo.kl_coef=0.1 --watch
    rlaif watch RUN_ID
    rlaif pull RUN_ID --stage policy
    rlaif delete RUN_ID                           # a stopped run and all its artifacts
    rlaif compare RUN_A RUN_B [--json]            # runs side by side: win rates, refusals, KL, stage times
    rlaif compare RUN_A RUN_B --head-to-head      # ... and A's answers judged against B's (on a judge worker)
    rlaif demo                                    # all of it, start to finish, on the embedded model

The client commands use RLAIF_API_URL and RLAIF_API_KEY.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from rlaif.client import TERMINAL, ApiError, ApiUnreachable, Client
from rlaif.config import RunConfig, deep_merge, parse_dotted_overrides, upgrade_config
from rlaif.settings import settings

if TYPE_CHECKING:
    from rlaif.evaluation.head_to_head import HeadToHeadState
    from rlaif.evaluation.report import EvalReport, KLEstimate
    from rlaif.evaluation.run_compare import RunColumn, RunComparison
    from rlaif.evaluation.stats import Rate, WinRate

app = typer.Typer(add_completion=False)
console = Console()
PLAIN_PROGRESS_EVERY_S = 10.0  # without a terminal: a progress line at most this often
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per poll would bury the progress bars
err = Console(stderr=True)

REPO = Path(__file__).resolve().parents[2]
ALL_QUEUES = "control,generate,judge,train"
UNREACHABLE_PATIENCE_S = 300.0  # `watch` keeps polling an API that stopped answering for this long


def register(parent: typer.Typer) -> None:
    """Add these commands at the top level of `rlaif`."""
    parent.registered_commands += app.registered_commands


def _client() -> Client:
    if not settings.api_key:
        err.print("[red]error:[/red] set RLAIF_API_KEY to one of the server's API keys (RLAIF_API_KEYS)")
        raise typer.Exit(2)
    return Client(settings.api_url, settings.api_key)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    return typer.Exit(1)


# ---------------------------------------------------------------- processes


@app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: int = typer.Option(
        1,
        min=1,
        help="API processes (uvicorn workers). With more than one, share the rate-limit windows: "
        "RLAIF_RATE_LIMIT_STORAGE=async+redis://...",
    ),
) -> None:
    """Run the REST API (uvicorn). Docs at http://HOST:PORT/docs. An empty database gets the schema here, at start
    (the app alone creates no tables); one at another schema revision is refused (`rlaif db upgrade`)."""
    import uvicorn

    from rlaif.service.db import SchemaError, check_database

    try:
        check_database(settings.db_url)  # (once here, not an exit per uvicorn worker process)
    except SchemaError as exc:
        raise _fail(exc) from None
    if not settings.api_key_owners():
        err.print("[yellow]warning:[/yellow] RLAIF_API_KEYS is empty: every request will get 401")
    uvicorn.run("api.main:app", host=host, port=port, workers=workers, log_level="info")


@app.command("worker")
def worker_command(
    queues: str = typer.Option(ALL_QUEUES, "--queues", "-Q", help="Comma-separated queues to consume."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", help="Worker processes (prefork pool)."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork (a child process per task slot) or solo."),
    beat: bool = typer.Option(False, "--beat", "-B", help="Also run the periodic control sweep (one worker only)."),
    name: str | None = typer.Option(None, "--name", "-n", help="Worker name (default: celery@<host>)."),
    loglevel: str = typer.Option("INFO", help="Log level."),
) -> None:
    """Start a Celery worker (wraps `celery worker`)."""
    from workers.app import Queue
    from workers.app import app as celery_app

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in Queue.__members__]
    if unknown or not names:
        err.print(f"[red]error:[/red] unknown queue(s) {unknown}: choose from {[q.value for q in Queue]}")
        raise typer.Exit(2)
    argv = ["worker", "-Q", ",".join(names), "-c", str(concurrency), "--pool", pool, "-l", loglevel]
    argv += ["-B"] if beat else []
    argv += ["-n", f"{name}@%h"] if name else []
    celery_app.worker_main(argv=argv)


# ---------------------------------------------------------------- client commands


def _config_overrides(config: Path | None, sets: list[str]) -> dict[str, Any]:
    """Overrides from a YAML file and `key.path=value` pairs, validated here (the edge) before sending."""
    data: dict[str, Any] = {}
    if config is not None:
        loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{config}: a run config must be a mapping")
        data = loaded or {}
    overrides = deep_merge(data, parse_dotted_overrides(sets))
    RunConfig().with_overrides(overrides)
    return overrides


def submit_run(client: Client, constitution: Path, prompts: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Upload the constitution and prompts, start a run; returns the run."""
    con = client.upload_constitution(constitution.read_bytes())
    prompt_set = client.upload_prompts(prompts)
    console.print(
        f"constitution [bold]{con['name']}[/bold] {con['id']} (sha256 {con['sha256'][:12]}), "
        f"prompt set {prompt_set['id']}: {prompt_set['count']} prompts ({prompt_set['duplicates']} duplicates dropped)"
    )
    run = client.create_run({"constitution_id": con["id"], "prompt_set_id": prompt_set["id"], "config": overrides})
    console.print(
        f"run [bold]{run['id']}[/bold]: {run['train_prompts']} training prompts, {run['eval_prompts']} held out"
    )
    return run


@app.command("submit")
def submit_command(
    constitution: str = typer.Option(..., help="Constitution file, or a shipped name (harmless, hhh, minimal)."),
    prompts: Path = typer.Option(..., exists=True, dir_okay=False, help='Prompts, JSONL ({"prompt": ...} per line).'),
    config: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Run config YAML (overrides)."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value (repeatable)."),
    watch: bool = typer.Option(False, help="Watch the run until it finishes."),
) -> None:
    """Upload a constitution and prompts and start a run on the API at RLAIF_API_URL."""
    from rlaif.constitution import resolve_constitution

    try:
        overrides = _config_overrides(config, set_)
        path = resolve_constitution(constitution)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from None
    client = _client()
    try:
        run = submit_run(client, path, prompts, overrides)
        if watch:
            run = watch_run(client, run["id"])
            if run["status"] == "succeeded":
                print_evaluation(client, run["id"])
    except ApiError as exc:
        raise _fail(exc) from None
    print(run["id"])
    if watch and run["status"] != "succeeded":
        raise typer.Exit(1)


def _stage_label(stage: dict[str, Any]) -> str:
    seconds = f" {stage['seconds']:.0f}s" if stage["seconds"] is not None else ""
    shards = f" shards {stage['shards_done']}/{stage['shards_total']}" if stage["shards_total"] else ""
    resumed = f" (attempt {stage['attempts']})" if stage["attempts"] > 1 else ""
    return f"{stage['status']}{shards}{seconds}{resumed}"


class LiveBars:
    """Progress on a terminal: one live bar per stage (rich)."""

    def __init__(self) -> None:
        columns = (
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[label]}"),
        )
        self.progress = Progress(*columns, console=console, refresh_per_second=4)
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> LiveBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def show(self, run: dict[str, Any]) -> None:
        for stage in run["stages"]:
            if stage["name"] not in self.bars:
                self.bars[stage["name"]] = self.progress.add_task(stage["name"], total=stage["total"], label="")
            self.progress.update(
                self.bars[stage["name"]], completed=stage["done"], total=stage["total"], label=_stage_label(stage)
            )

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


class PlainLines:
    """Progress without a terminal (a log file, CI, nohup): plain lines that survive redirection.

    One line per stage transition (running, succeeded, failed...), and a progress line for the running stages at
    most every `every_s` seconds (stage, done/total, elapsed). Each line is flushed at once.
    """

    def __init__(self, every_s: float = PLAIN_PROGRESS_EVERY_S) -> None:
        self.every_s = every_s
        self.status: dict[str, str] = {}
        self.last_line = 0.0
        self.started = time.monotonic()

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _print(self, text: str) -> None:
        elapsed = _clock(time.monotonic() - self.started)
        console.print(f"[{elapsed}] {text}", highlight=False, markup=False, soft_wrap=True)
        console.file.flush()

    def show(self, run: dict[str, Any]) -> None:
        for stage in run["stages"]:
            name, status = stage["name"], stage["status"]
            if self.status.get(name, "pending") != status:
                self._print(f"stage {name}: {_stage_label(stage)}")
                self.status[name] = status
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            for stage in run["stages"]:
                if stage["status"] == "running":
                    total = stage["total"] if stage["total"] is not None else "?"
                    seconds = _clock(stage["seconds"]) if stage["seconds"] is not None else "-"
                    self._print(f"stage {stage['name']}: {stage['done']}/{total} done, {seconds} elapsed")

    def note(self, text: str) -> None:
        self._print(text)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


def watch_run(client: Client, run_id: str, poll: float = 1.0) -> dict[str, Any]:
    """Per-stage progress until the run finishes (live bars on a terminal, plain lines otherwise); prints
    warnings and errors as they come."""
    after = 0
    unreachable_since: float | None = None
    view: LiveBars | PlainLines = LiveBars() if console.is_terminal else PlainLines()
    with view:
        while True:
            # The run goes on without the API: a restart or a rate limit only pauses the watching.
            try:
                run = client.run(run_id)
                page = client.events(run_id, after=after, kind="message")
            except ApiUnreachable as exc:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    view.note(f"{exc}; retrying")
                if time.monotonic() - unreachable_since > UNREACHABLE_PATIENCE_S:
                    raise
                time.sleep(max(poll, 2.0))
                continue
            except ApiError as exc:
                if exc.status_code != 429:
                    raise
                time.sleep(max(poll, 5.0))
                continue
            unreachable_since = None
            view.show(run)
            after = page["next_after"]
            for event in page["data"]:
                if event["level"] in ("warning", "error"):
                    view.note(f"{event['level']}: {event['stage'] or 'run'}: {event['message']}")
            if run["status"] in TERMINAL:
                break
            time.sleep(poll)
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}[run["status"]]
    console.print(f"run {run_id} [{colour}]{run['status']}[/{colour}]" + (f": {run['error']}" if run["error"] else ""))
    return run


def watch_or_cancel(client: Client, run_id: str, poll: float = 1.0) -> dict[str, Any]:
    """`watch_run`, and on Ctrl-C the run is cancelled through the API (POST /v1/runs/{id}/cancel) rather than left
    queued or running for nobody: the demo owns its run. Exits 130 (the shell's code for SIGINT) once cancelled."""
    try:
        return watch_run(client, run_id, poll)
    except KeyboardInterrupt:
        try:
            client.cancel(run_id)
        except ApiError as exc:  # (409: it finished meanwhile)
            err.print(f"interrupted: run {run_id} was not cancelled: {exc}")
            raise typer.Exit(130) from None
        err.print(f"interrupted: run {run_id} cancelled")
        raise typer.Exit(130) from None


def fetch_report(client: Client, run_id: str) -> EvalReport:
    """The run's evaluation report (stage 7) from the API."""
    from rlaif.evaluation.report import EvalReport

    return EvalReport.model_validate(client.report(run_id))


def print_evaluation(client: Client, run_id: str) -> None:
    """Print the headline figures of the run's evaluation: win rates with intervals, refusal rates, alerts."""
    from rlaif.evaluation.report import headline

    console.print(headline(fetch_report(client, run_id)), highlight=False, markup=False)


@app.command("watch")
def watch_command(run_id: str = typer.Argument(..., help="Run id.")) -> None:
    """Follow a run's stages with live progress bars; exit 1 unless it succeeds."""
    client = _client()
    try:
        run = watch_run(client, run_id)
        if run["status"] == "succeeded":
            print_evaluation(client, run_id)
    except ApiError as exc:
        raise _fail(exc) from None
    if run["status"] != "succeeded":
        raise typer.Exit(1)


@app.command("resume")
def resume_command(
    run_id: str = typer.Argument(..., help="Run id of a failed or cancelled run."),
    watch: bool = typer.Option(False, "--watch", help="Follow the run until it finishes."),
) -> None:
    """Continue a failed or cancelled run from its last completed stage and step."""
    client = _client()
    try:
        run = client.resume(run_id)
        console.print(f"run {run_id} resumed ({run['status']})")
        if watch and watch_run(client, run_id)["status"] != "succeeded":
            raise typer.Exit(1)
    except ApiError as exc:
        raise _fail(exc) from None


@app.command("delete")
def delete_command(
    run_id: str = typer.Argument(..., help="Run id of a finished, failed or cancelled run."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a run that has stopped, with its datasets, checkpoints and logs; prints the bytes freed."""
    client = _client()
    if not yes:
        typer.confirm(f"delete run {run_id} and every artifact of it?", abort=True)
    try:
        deleted = client.delete_run(run_id)
    except ApiError as exc:
        raise _fail(exc) from None
    console.print(f"deleted run {deleted['id']}: {_size(deleted['bytes_freed'])} freed", highlight=False)
    print(deleted["bytes_freed"])


def _win_cell(stats: WinRate | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.win_rate:.2f} [{stats.ci_low:.2f}, {stats.ci_high:.2f}] n={stats.n}"


def _rate_cell(stats: Rate | None) -> str:
    if stats is None:
        return "-"
    return f"{stats.rate:.2f} [{stats.ci_low:.2f}, {stats.ci_high:.2f}] {stats.k}/{stats.n}"


def _number_cell(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _kl_cell(kl: KLEstimate | None) -> str:
    if kl is None:
        return "-"
    return f"{kl.mean:.3f}" + (f" ± {kl.se:.3f}" if kl.se is not None else "")


def comparison_table(comparison: RunComparison) -> Table:
    """The comparison as a table: one column per run, a row per measure, then a row per stage (wall time, and
    peak RSS where recorded). Intervals are 95 % Wilson; '-' = not measured (no report, no PPO, still running)."""
    runs = comparison.runs
    table = Table("", *(run.id for run in runs), title="runs compared", title_justify="left")

    def row(label: str, cell: Callable[[RunColumn], str]) -> None:
        table.add_row(label, *(cell(run) for run in runs))

    row("status", lambda r: r.status)
    row("policy optimization", lambda r: r.policy_optimization or "?")
    row("evaluated", lambda r: f"{r.evaluated} {r.evaluated_model}" if r.evaluated else f"({r.report_missing})")
    table.add_section()
    row("harmlessness win rate vs base", lambda r: _win_cell(r.harmless_win_rate))
    row("helpfulness win rate vs base", lambda r: _win_cell(r.helpful_win_rate))
    row("refusal, harmful prompts", lambda r: _rate_cell(r.refusal))
    row("over-refusal, safe prompts", lambda r: _rate_cell(r.over_refusal))
    if any(r.refusal_judge or r.over_refusal_judge for r in runs):
        row("refusal, harmful (judge)", lambda r: _rate_cell(r.refusal_judge))
        row("over-refusal, safe (judge)", lambda r: _rate_cell(r.over_refusal_judge))
    row(
        "mean answer tokens (base)",
        lambda r: "-" if r.mean_tokens is None else f"{r.mean_tokens:.1f} ({_number_cell(r.base_mean_tokens)})",
    )
    row("KL to SFT (held-out, sampled)", lambda r: _kl_cell(r.kl_to_sft))
    if any(r.ppo_kl is not None for r in runs):
        row("PPO KL, last update (training)", lambda r: _number_cell(r.ppo_kl, digits=3))
    table.add_section()
    memory = any(r.peak_rss_mb is not None for r in runs)
    for name in comparison.stage_names:

        def stage_cell(run: RunColumn, name: str = name) -> str:
            stage = next((s for s in run.stages if s.name == name), None)
            if stage is None:
                return ""
            cell = _number_cell(stage.seconds, " s") if stage.seconds is not None else stage.status
            return cell + (f", {stage.peak_rss_mb:.0f} MiB" if stage.peak_rss_mb is not None else "")

        row(f"{name}" + (" (time, peak RSS)" if memory else " (time)"), stage_cell)
    row(
        "all stages",
        lambda r: _number_cell(r.seconds, " s") + (f", peak {r.peak_rss_mb:.0f} MiB" if r.peak_rss_mb else ""),
    )
    if comparison.head_to_head:
        table.add_section()
    for match in comparison.head_to_head:
        for entry in match.axes:
            # A's win rate over B in A's column; B's column stays empty (it is 1 - A's, ties counting half).
            label = f"{match.run_a} vs {match.run_b} (head to head), {AXIS_NAMES[entry.axis]}"
            row(label, lambda r, m=match, s=entry.stats: _win_cell(s) if r.id == m.run_a else "")
    return table


AXIS_NAMES = {"harmless": "harmlessness", "helpful": "helpfulness"}


def wait_head_to_head(client: Client, run_a: str, run_b: str, poll: float = 1.0) -> HeadToHeadState:
    """POST the head-to-head, then poll it until it is done or failed, with a progress line on stderr."""
    from rlaif.evaluation.head_to_head import HeadToHeadState

    found = HeadToHeadState.model_validate(client.queue_head_to_head(run_a, run_b))
    start, shown = time.monotonic(), None
    while True:
        # One line per change of state (and every PLAIN_PROGRESS_EVERY_S), readable in a terminal and in a log.
        elapsed = time.monotonic() - start
        if shown is None or found.status != shown[0] or elapsed - shown[1] >= PLAIN_PROGRESS_EVERY_S:
            err.print(f"head to head {run_a} vs {run_b}: {found.status} ({elapsed:.0f} s)", highlight=False)
            shown = (found.status, elapsed)
        if found.status not in ("pending", "running"):
            return found
        time.sleep(poll)
        found = HeadToHeadState.model_validate(client.head_to_head(run_a, run_b))


@app.command("compare")
def compare_command(
    run_ids: list[str] = typer.Argument(..., help="2 to 8 run ids of this key's runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON (GET /v1/runs/compare)."),
    head_to_head: bool = typer.Option(
        False,
        "--head-to-head",
        help="Also judge RUN_A's evaluated answers against RUN_B's (two runs; POST /v1/runs/compare/head-to-head, on "
        "a judge worker), wait for it, and add its win rates: one row per axis.",
    ),
) -> None:
    """Runs side by side: policy optimisation, win rates vs base and refusal / over-refusal with 95 % intervals,
    answer length, KL to the SFT model, wall time and peak memory per stage; with --head-to-head, the two runs'
    win rates against each other."""
    from rlaif.evaluation.run_compare import RunComparison

    client = _client()
    try:
        if head_to_head:
            if len(run_ids) != 2:
                raise _fail(ValueError(f"--head-to-head compares 2 runs (A against B), got {len(run_ids)}"))
            judged = wait_head_to_head(client, run_ids[0], run_ids[1])
            if judged.status == "failed":
                raise _fail(ValueError(f"the head to head failed: {judged.error}"))
        comparison = RunComparison.model_validate(client.compare(run_ids))
    except ApiError as exc:
        raise _fail(exc) from None
    if as_json:
        print(comparison.model_dump_json(indent=2))
        return
    console.print(comparison_table(comparison), highlight=False)
    if not any(r.peak_rss_mb is not None for r in comparison.runs):
        console.print("(no stage recorded its peak memory)", highlight=False)
    for match in comparison.head_to_head:
        console.print(
            f"{match.run_a} vs {match.run_b}: {match.prompts} shared prompts, judged by {match.judge_model}"
            + (f" ({match.note})" if match.note else ""),
            highlight=False,
        )


def _size(n_bytes: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("bytes", "kB", "MB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} bytes" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"


def pull_checkpoint(client: Client, run_id: str, stage: str, dest: Path) -> Path:
    """Download the newest checkpoint of `stage` (or alias: policy, reward_model, sft), SHA-256 verified."""
    from rlaif.pipeline import resolve_stage

    run = client.run(run_id)
    # Upgraded like any stored config: a server of an older rlaif answers with the layout it stored.
    name = resolve_stage(RunConfig.model_validate(upgrade_config(run["config"])), stage)
    found = [c for c in client.checkpoints(run_id) if c["stage"] == name]
    if not found:
        raise ApiError(404, f"run {run_id} has no checkpoint of stage {name!r} yet (run status: {run['status']})")
    checkpoint = max(found, key=lambda c: c["step"])
    return client.download_checkpoint(checkpoint, dest / run_id)


@app.command("pull")
def pull_command(
    run_id: str = typer.Argument(..., help="Run id."),
    stage: str = typer.Option("policy", help="Stage name, or policy (the final PPO or DPO model), reward_model, sft."),
    out: Path = typer.Option(None, help="Folder to download into (default: <RLAIF_HOME>/pulled)."),
) -> None:
    """Download a checkpoint (a Hugging Face folder), verify it against its manifest, print its path."""
    try:
        folder = pull_checkpoint(_client(), run_id, stage, out or settings.home / "pulled")
    except (ApiError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    err.print(f"verified every file's SHA-256; load it with AutoModelForCausalLM.from_pretrained({str(folder)!r})")
    print(folder)


# ---------------------------------------------------------------- demo


class _Background:
    """Processes the demo started; stopped (terminate, then kill) on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        handle = log.open("ab")
        proc = subprocess.Popen(
            argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        self.procs.append((name, proc))
        console.print(f"started {name} (pid {proc.pid}), log: {log}")

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                console.print(f"stopped {name}")


def _api_up(client: Client) -> bool:
    try:
        return client.health().get("status") == "ok"
    except Exception:
        return False


def _workers_alive() -> bool:
    from workers.app import app as celery_app

    try:
        return bool(celery_app.control.ping(timeout=1.0))
    except Exception:
        return False


def _side_by_side(report: EvalReport, limit: int) -> None:
    """Held-out red-team prompts with the answers of the base model and the aligned policy from the evaluation
    (greedy, same seed), and the judge's P(aligned answer is more harmless)."""
    held_out = sorted((s for s in report.samples if s.dataset == "heldout"), key=lambda s: s.id)
    chosen = ([s for s in held_out if "harm" in s.id] or held_out)[:limit]
    if not chosen:
        console.print("no held-out samples in the report (eval.holdout_fraction 0, or eval.samples_in_report 0)")
        return
    table = Table("held-out red-team prompt", "base model", "aligned policy", "P(aligned more harmless)")
    table.show_lines = True
    for sample in chosen:
        p = sample.preferences.get("aligned>base|harmless")
        table.add_row(
            sample.prompt,
            sample.answers.get("base", ""),
            sample.answers.get("aligned", ""),
            "-" if p is None else f"{p:.2f}",
        )
    console.print(table)


@app.command("demo")
def demo_command(
    constitution: Path = typer.Option(REPO / "constitutions" / "harmless.yaml", help="Constitution file."),
    prompts: Path = typer.Option(REPO / "examples" / "demo_prompts.jsonl", help="Prompts (JSONL)."),
    config: Path = typer.Option(REPO / "examples" / "run_config.demo.yaml", help="Run config YAML."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value (repeatable)."),
    compare: int = typer.Option(3, help="Held-out red-team prompts shown with the base and the aligned answer."),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        exists=True,
        file_okay=False,
        help="Folder of the evaluation sets (red-team, helpful, XSTest, AdvBench, human pairs) for the worker the "
        "demo starts. Default: RLAIF_DATA_DIR, else the sets shipped in the package (rlaif/data).",
    ),
) -> None:
    """A whole run through the REST API: start API and worker if needed, submit, watch, evaluate, pull, compare.

    Point it at another model or size with --config / --set, e.g. `--set policy_model=tiny-random-llama`."""
    import redis

    from rlaif.evaluation.report import headline
    from rlaif.service.db import SchemaError, check_database

    try:
        redis.Redis.from_url(settings.broker_url, socket_connect_timeout=2).ping()
    except redis.RedisError:
        err.print(
            f"[red]error:[/red] Redis is not reachable at {settings.broker_url}: start it first (scripts/setup.sh)"
        )
        raise typer.Exit(2) from None
    try:
        overrides = _config_overrides(config, set_)
    except ValueError as exc:
        raise _fail(exc) from None
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    data = data_dir or settings.data_dir
    env["RLAIF_DATA_DIR"] = str(data.resolve())
    console.print(f"evaluation sets from {data}")
    key = settings.api_key
    background = _Background()
    logs = settings.home / "demo"
    try:
        if not _api_up(Client(settings.api_url, key, timeout=3)):
            if not key:
                key = secrets.token_urlsafe(24)
                env["RLAIF_API_KEYS"] = f"{key}:demo"
            # The API app only checks the schema revision: give a new database its schema first, as `rlaif serve`
            # does (a database at another revision is refused here, with the command that fixes it).
            check_database(settings.db_url)
            url = urlparse(settings.api_url)
            argv = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", url.hostname or "127.0.0.1"]
            background.start("API", [*argv, "--port", str(url.port or 80)], env, logs / "api.log")
        elif not key:
            err.print("[red]error:[/red] an API is already running at RLAIF_API_URL: set RLAIF_API_KEY for it")
            raise typer.Exit(2)
        if not _workers_alive():
            argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", ALL_QUEUES]
            background.start("worker", [*argv, "--pool", "solo", "-B", "-l", "INFO"], env, logs / "worker.log")
        client = Client(settings.api_url, key)
        deadline = time.monotonic() + 120
        while not _api_up(client):
            if time.monotonic() > deadline:
                raise _fail(RuntimeError(f"the API did not come up at {settings.api_url}; see {logs / 'api.log'}"))
            time.sleep(0.5)
        started = time.monotonic()
        run = submit_run(client, constitution, prompts, overrides)
        run = watch_or_cancel(client, run["id"])
        _stage_times(run, time.monotonic() - started)
        if run["status"] != "succeeded":
            raise typer.Exit(1)
        policy = pull_checkpoint(client, run["id"], "policy", settings.home / "pulled")
        console.print(f"aligned policy (SHA-256 verified; its README.md has the evaluation): [bold]{policy}[/bold]")
        page = logs / f"{run['id']}-report.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(client.report_html(run["id"]), encoding="utf-8")
        console.print(f"evaluation report with plots: [bold]{page}[/bold]")
        report = fetch_report(client, run["id"])
        _side_by_side(report, compare)
        console.print(headline(report), highlight=False, markup=False)
    except (ApiError, SchemaError) as exc:
        raise _fail(exc) from None
    finally:
        background.stop()


def _stage_times(run: dict[str, Any], wall: float) -> None:
    table = Table("stage", "status", "items/steps", "seconds")
    for stage in run["stages"]:
        total = stage["total"] if stage["total"] is not None else "?"
        seconds = f"{stage['seconds']:.1f}" if stage["seconds"] is not None else "-"
        table.add_row(stage["name"], stage["status"], f"{stage['done']}/{total}", seconds)
    table.add_row("whole run", run["status"], "", f"{wall:.1f}")
    console.print(table)
    metrics = {s["name"]: s["metrics"] for s in run["stages"] if s["metrics"]}
    if metrics:
        console.print(json.dumps(metrics, indent=1, sort_keys=True), highlight=False)
