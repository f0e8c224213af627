"""Running compare's variants as a job array through submitit: on Slurm, or as local processes.

`make_cluster("slurm", ["partition=gpu", "time=30"], jobs, out)` gives a `Cluster` (or None for
`local`, compare's own process pool); `compare(..., cluster=c)` then hands it the variants
(`Cluster.run`, with the pool's signature): each is the same task a pool worker is sent
(`compare._task`), run in its own job by `run_array_task`, which writes its record under
`--out` as any worker does. So `--out` must be on a filesystem the nodes share, and so must the
Python environment. With no `sbatch` on the PATH the array runs as local processes through
submitit's LocalExecutor (what the tests use). A stop signal cancels the jobs (Slurm sends them
SIGTERM: their records say `interrupted`); what they wrote is collected as usual.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gradlab.config import ConfigError
from gradlab.config.messages import did_you_mean
from gradlab.record.files import unique_dir, utc_stamp

Backend = Literal["slurm", "local"]
SLURM_SOURCE = "--slurm"
# `--slurm KEY=VALUE`: the options gradlab passes to sbatch (through submitit's SlurmExecutor)
SLURM_KEYS = {
    "partition": "the partition (sbatch --partition)",
    "time": "each task's time limit: minutes (90), H:MM:SS or D-HH:MM:SS (default 60 minutes)",
    "cpus": "CPUs per task; each variant's torch threads (default 1)",
    "mem": "memory per task, e.g. 4G (sbatch --mem)",
    "array_parallelism": "at most this many tasks of the array at once (default: --jobs, "
                         "else 256)",
    "account": "the account to charge (sbatch --account)",
    "qos": "quality of service (sbatch --qos)",
    "gpus": "GPUs per task (sbatch --gpus-per-node); set --device cuda to use them",
    "constraint": "node features (sbatch --constraint)",
    "setup": "a shell line run before each task, e.g. 'module load cuda' (repeatable)",
}
DEFAULT_MINUTES = 60
POLL = 0.5  # seconds between checks of the jobs
STOP_GRACE = 30.0  # seconds cancelled jobs get to write their records before gradlab stops waiting


@dataclass(frozen=True)
class Cluster:
    """Where and how the job array runs. `parallelism` None: all tasks at once on Slurm
    (up to submitit's 256), compare's `jobs` for local processes."""

    backend: Backend
    partition: str | None = None
    minutes: int = DEFAULT_MINUTES
    cpus: int = 1
    mem: str | None = None
    parallelism: int | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int = 0
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list, compare=False)

    def executor(self, folder: Path) -> Any:
        """A submitit executor with these parameters, keeping its files in `folder`."""
        import submitit

        if self.backend == "local":
            local = submitit.LocalExecutor(folder=folder)
            local.update_parameters(timeout_min=self.minutes, gpus_per_node=self.gpus,
                                    **({"setup": list(self.setup)} if self.setup else {}))
            return local
        ex = submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(**self.slurm_parameters())
        return ex

    def slurm_parameters(self) -> dict[str, Any]:
        """What submitit's SlurmExecutor is given (its names for sbatch's options)."""
        params: dict[str, Any] = {"job_name": "gradlab", "time": self.minutes,
                                  "cpus_per_task": self.cpus}
        optional = {"partition": self.partition, "mem": self.mem, "account": self.account,
                    "qos": self.qos, "constraint": self.constraint,
                    "array_parallelism": self.parallelism,
                    "gpus_per_node": self.gpus or None, "setup": list(self.setup) or None}
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def run(self, todo: list[Any], jobs: int, threads: int, out: Path, plots: bool,
            on_done: Callable[[Any], None] | None) -> bool:
        """Run the variants as submitit jobs (compare's pool signature; `threads` is replaced
        by `cpus`); return whether a stop signal ended them early."""
        return _run_jobs(self, todo, jobs, Path(out), plots, on_done)


def parse_minutes(text: str) -> int:
    """`90` (minutes), `1:30:00` (H:MM:SS), `2-00:00:00` (D-HH:MM:SS) → minutes (ValueError)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d{1,2}))?(?::(\d{1,2}))?", text.strip())
    if not m:
        raise ValueError(text)
    days, first, second, third = m.groups()
    if second is None:  # minutes alone (with days: D-HH)
        minutes = int(first) * (60 if days else 1)
    elif third is None:  # H:MM (D-HH:MM)
        minutes = int(first) * 60 + int(second)
    else:  # H:MM:SS, rounded up to whole minutes
        minutes = int(first) * 60 + int(second) + (1 if int(third) else 0)
    minutes += int(days or 0) * 24 * 60
    if minutes < 1:
        raise ValueError(text)
    return minutes


def parse_slurm(items: list[str]) -> dict[str, Any]:
    """`--slurm KEY=VALUE` items as Cluster fields; bad input is a ConfigError naming the key."""
    fields: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    setup: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            problems.append(("", f"expected KEY=VALUE (partition=gpu), got {item!r}"))
            continue
        if key not in SLURM_KEYS:
            problems.append((key, f"unknown option{did_you_mean(key, list(SLURM_KEYS))}; "
                                  f"allowed: {', '.join(SLURM_KEYS)}"))
            continue
        if not value:
            problems.append((key, "needs a value"))
        elif key == "time":
            try:
                fields["minutes"] = parse_minutes(value)
            except ValueError:
                problems.append((key, f"{value!r}: minutes (90), H:MM:SS or D-HH:MM:SS"))
        elif key in ("cpus", "array_parallelism", "gpus"):
            if not value.isdigit() or (int(value) < 1 and key != "gpus"):
                problems.append((key, f"{value!r}: a whole number ≥ {0 if key == 'gpus' else 1}"))
            else:
                fields["parallelism" if key == "array_parallelism" else key] = int(value)
        elif key == "mem" and not re.fullmatch(r"\d+[KMGT]?", value, re.IGNORECASE):
            problems.append((key, f"{value!r}: a size as sbatch --mem takes it: 4G, 4000M, "
                                  "or megabytes (4000)"))
        elif key == "setup":
            setup.append(value)
        else:
            fields[key] = value
    if problems:
        raise ConfigError(SLURM_SOURCE, problems)
    if setup:
        fields["setup"] = tuple(setup)
    return fields


def make_cluster(executor: str, slurm: list[str] | None, jobs: int | None) -> Cluster | None:
    """The `--executor` and `--slurm` options as a Cluster, or None for compare's own pool
    (`local`). ConfigError for bad input. Without `sbatch` the job array runs locally through
    submitit (a note says so)."""
    if executor not in ("local", "slurm"):
        raise ConfigError("--executor", [("", f"{executor!r}: local or slurm")])
    if executor == "local":
        if slurm:
            raise ConfigError(SLURM_SOURCE, [("", "--slurm options need --executor slurm")])
        return None
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError("--executor", [("", "slurm needs submitit: pip install "
                                              "'gradlab[cluster]' (or pip install submitit)")]) \
            from None
    fields = parse_slurm(slurm or [])
    if jobs is not None:
        fields.setdefault("parallelism", jobs)
    notes = []
    backend: Backend = "slurm"
    if shutil.which("sbatch") is None:
        backend = "local"
        notes.append("no sbatch on the PATH: the job array runs as local processes through "
                     "submitit (Slurm options other than time, cpus and setup are ignored)")
    return Cluster(backend=backend, notes=notes, **fields)


def run_array_task(task: tuple[Any, ...]) -> dict[str, Any]:
    """One variant in a submitit job: compare's worker task, with Slurm's stop signals (SIGTERM
    from scancel, SIGUSR2 before the time limit) and SIGINT taken as a stop request, so the run's
    record says `interrupted` rather than nothing."""
    from gradlab import compare

    for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR2", None)):
        if sig is not None:
            signal.signal(sig, compare._ask_stop)
    return compare._run_task(*task)


def _absolute(task: tuple[Any, ...]) -> tuple[Any, ...]:
    """A task whose paths do not depend on the directory the job starts in."""
    path, overrides, out, threads, plots, place = task
    place = (os.path.abspath(place[0]), place[1]) if place else None
    return (os.path.abspath(path), overrides, os.path.abspath(out), threads, plots, place)


@contextlib.contextmanager
def _children_ignore_ctrl_c() -> Iterator[None]:
    """While submitit starts its processes: SIGINT ignored, which they inherit. Ctrl-C goes to
    the terminal's whole process group, and submitit's local job controller would print its
    KeyboardInterrupt tracebacks over the report; the jobs themselves take SIGINT as a stop
    request again (`run_array_task`), and compare cancels what is left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_jobs(cluster: Cluster, todo: list[Any], jobs: int, out: Path, plots: bool,
              on_done: Callable[[Any], None] | None) -> bool:
    from gradlab import compare

    folder = unique_dir(out / ".submitit", utc_stamp())  # job files, beside the records
    ex = cluster.executor(folder)
    tasks = {id(v): _absolute(compare._task(v, out, cluster.cpus, plots)) for v in todo}
    queue = deque(todo)
    running: dict[Any, tuple[Any, float]] = {}  # job → (variant, submitted at)
    if cluster.backend == "slurm":  # one array; Slurm keeps to its parallelism
        submitted = time.time()
        with _children_ignore_ctrl_c():
            array = ex.map_array(run_array_task, [tasks[id(v)] for v in todo])
        for v, job in zip(todo, array):
            running[job] = (v, submitted)
        queue.clear()
    limit = cluster.parallelism or jobs
    acted, deadline = 0, None

    def collect(job: Any) -> None:
        v, since = running.pop(job)
        try:
            result = job.result()
        except Exception as e:  # cancelled, timed out, killed (out of memory), node lost
            v.run_dir = _left_by(v, out, since)
            v.error = f"its {cluster.backend} job {job.job_id} ended without a result: " \
                      f"{_first_line(e)}"
        else:
            v.run_dir = Path(result["run_dir"]) if result["run_dir"] else None
            v.error, v.write_failed = result["error"], bool(result.get("write_failed"))
        compare._finish(v, on_done)

    with compare._Stop() as stop:
        while queue or running:
            if stop.count > acted:
                acted = stop.count
                for v in queue:
                    v.error = compare.NOT_STARTED
                    compare._finish(v, on_done)
                queue.clear()
                if acted == 1:
                    for job in running:
                        job.cancel(check=False)
                    deadline = time.monotonic() + STOP_GRACE
                else:
                    deadline = time.monotonic()
            while queue and len(running) < limit:
                v = queue.popleft()
                with _children_ignore_ctrl_c():
                    job = ex.submit(run_array_task, tasks[id(v)])
                running[job] = (v, time.time())
            for job in [j for j in running if j.done()]:
                collect(job)
            if deadline is not None and time.monotonic() >= deadline:
                for job in list(running):
                    v, since = running.pop(job)
                    v.run_dir = _left_by(v, out, since)
                    v.error = f"its {cluster.backend} job {job.job_id} was cancelled"
                    compare._finish(v, on_done)
            if running:
                time.sleep(POLL)
    return acted > 0


def _left_by(v: Any, out: Path, since: float) -> Path | None:
    """What a job that ended without a result left: a group member's own seed-N, or the newest
    run directory under out/NAME made since `since` (each variant of a comparison has its own
    name, so no other job writes there meanwhile)."""
    from gradlab.record.reader import is_run_dir, run_started

    if v.place is not None:
        own = Path(v.place[0]) / v.place[1]
        return own if is_run_dir(own) else None
    try:
        dirs = [d for d in (out / v.config.name).iterdir() if d.is_dir() and is_run_dir(d)]
    except OSError:
        return None
    found = [d for d in dirs if run_started(d)[0].timestamp() >= int(since) - 1]
    return max(found, key=run_started) if found else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}".strip()
