"""Running many configs in parallel and collecting their records side by side (a driver).

`compare(paths, ...)` validates every config, trains the valid ones in worker processes
(each limited to its share of the cores), and returns one `Variant` per config; a variant
that fails never stops the others, and neither does a worker that dies (the kernel's
out-of-memory killer, a `kill -9`): that worker's variant alone is lost, its row says so, and a
fresh worker takes the next one. `comparison_rows` flattens them for the table and
`write_record` stores the compare record (`record.comparison`).

Stopping. SIGINT, SIGTERM or SIGHUP to this process (`_Stop`) drops the queued variants and
asks every busy worker to stop its variant (SIGUSR1: its record says `interrupted`, with a
final evaluation), then waits for them and collects what they wrote. A second signal asks
them to stop at once (SIGUSR2: no final evaluation) and waits at most `STOP_GRACE` seconds;
a third one, or the grace running out, kills them (their records read `incomplete`).
Workers (`_serve`) ignore SIGINT and SIGHUP, which a terminal sends to the whole process
group (this process forwards them); they take SIGTERM as a stop request too, and stop
by themselves when this process dies (`_watch_parent`). The table is made from the records
on disk, so it always says what they say.

Workers are forked by multiprocessing's fork server (`_context`), where the platform has one:
a fresh process that imports this module and the runner (torch) once and forks a worker per
request, so a comparison pays one torch import for all its workers, not one each. This process
itself imports no torch (pre-flight settles most configs without it, `build.budget`): it plans,
waits and collects. The fork server is started with the stop signals blocked, so neither it nor
the workers it forks receive one before their handlers are in place; it only imports (it runs
no torch work, so no torch threads are forked), and it ends with this process and its workers.
Without a fork server (Windows) the workers are spawned.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gradlab.analyse.expect import Expectation, check, check_seeds, check_versus
from gradlab.build.budget import preflight
from gradlab.config import Config, ConfigError, config_hash, load_config
from gradlab.config.checks import versus_specs
from gradlab.record import stopping
from gradlab.record.bounded import read_rows
from gradlab.record.comparison import write_comparison
from gradlab.record.group import (
    GROUP_FILE,
    group_summary,
    is_group_dir,
    link_seed,
    new_group_dir,
    read_group,
    seed_stem,
    top_verdicts,
    write_group,
)
from gradlab.record.guard import RecordWriteError
from gradlab.record.reader import Record, is_run_dir, is_training_row, read_summary, run_started
from gradlab.record.validate import CorruptRecord
from gradlab.render.compare_table import comparison_markdown

if TYPE_CHECKING:
    from gradlab.cluster import Cluster

# Where variants run: worker processes (the default, in parallel), or threads of this
# process (for tests and embedding: no spawn, no signals).
ExecutorKind = Literal["process", "thread"]
EXECUTOR: ExecutorKind = "process"  # the default of `compare(executor=None)`

NOT_STARTED = "not started: the comparison was interrupted"
STOP_GRACE = 5.0  # seconds the workers get after a second stop signal, before they are killed
POLL = 0.2  # seconds between checks of the workers and of the stop signals

STOP = getattr(signal, "SIGUSR1", signal.SIGTERM)  # parent → worker: stop your variant
HURRY = getattr(signal, "SIGUSR2", signal.SIGTERM)  # parent → worker: stop it at once


@dataclass
class Variant:
    """One config of a comparison and what became of it: one run, or, over several seeds, a
    group (`members`: one Variant per seed, each an ordinary run; `group`: its group.json)."""

    path: Path
    config: Config | None = None
    error: str | None = None  # a config error, or why the run could not start or finish
    run_dir: Path | None = None  # a group's directory, for a group
    reused: bool = False
    record: Record | None = None
    expectations: list[Expectation] = field(default_factory=list)
    interrupted: bool = False  # the comparison this variant belongs to was stopped by a signal
    write_failed: bool = False  # its run record could not be written (disk full, ...)
    overrides: list[str] = field(default_factory=list)  # this variant's own (a seed's `seed=N`)
    seed: int | None = None  # a group member's seed
    place: tuple[Path, str] | None = None  # a group member's run directory: (group dir, seed-N)
    members: list[Variant] = field(default_factory=list)
    group: dict[str, Any] | None = None
    plots: bool = True  # draw its figures (a group draws its first seed's)

    @property
    def name(self) -> str:
        return self.config.name if self.config else self.path.stem

    @property
    def label(self) -> str:
        """The name, with the seed for a group's member (progress lines)."""
        return self.name if self.seed is None else f"{self.name} seed {self.seed}"

    @property
    def is_group(self) -> bool:
        return bool(self.members)

    @property
    def status(self) -> str:
        if self.config is None:
            return "invalid"
        if self.is_group:
            if self.group is None:
                return "not run" if self.error == NOT_STARTED else "failed"
            return str(self.group.get("status"))
        if self.record is None:
            return "not run" if self.error == NOT_STARTED else "failed"
        return self.record.status

    def summaries(self) -> dict[int, dict[str, Any] | None]:
        """Each seed's summary.json (a single run: its own seed's)."""
        if self.is_group:
            return {m.seed if m.seed is not None else 0: m.record.summary if m.record else None
                    for m in self.members}
        seed = self.config.seed if self.config else 0
        return {seed: self.record.summary if self.record else None}

    @property
    def summary(self) -> dict[str, Any]:
        """The summary a row shows: a run's own; for a group, every number the mean over its
        seeds (`mean_summary`)."""
        if self.is_group:
            return mean_summary(self.group) if self.group else {}
        return (self.record.summary if self.record else None) or {}

    @property
    def expect_ok(self) -> bool | None:
        if not self.expectations:
            return None
        return all(e.ok for e in self.expectations)


REUSABLE = ("completed", "diverged")  # a divergence is a result: rerunning it changes nothing


def find_reusable(out: Path, cfg: Config) -> Path | None:
    """A finished run (completed or diverged) under `out` whose resolved config is identical
    (same config_hash): out/NAME/STAMP, or a group's out/NAME/STAMP/seed-N. Reads summary.json
    only; a run whose summary is corrupt is never reused."""
    wanted = config_hash(cfg)
    parent = Path(out) / cfg.name
    if not parent.is_dir():
        return None
    for entry in sorted(parent.iterdir(), reverse=True):
        candidates = [entry]
        if is_group_dir(entry):
            candidates = [entry / seed_stem(cfg.seed)]
        for run_dir in candidates:
            if not is_run_dir(run_dir):
                continue
            try:
                summary = read_summary(run_dir) or {}
            except CorruptRecord:
                continue
            if summary.get("status") in REUSABLE and summary.get("config_hash") == wanted:
                return run_dir
    return None


# ---------------------------------------------------------------- in a worker process

_state = "idle"  # idle | running (a variant) | stopping (asked to) | plotting
_stop_asked = False  # once asked to stop, a worker starts nothing more


def _ask_stop(signum: int, frame: Any) -> None:
    """SIGUSR1 from the parent, or SIGTERM: stop the running variant (once)."""
    global _state, _stop_asked
    _stop_asked = True
    if _state == "running":
        _state = "stopping"
        raise KeyboardInterrupt
    if _state == "plotting":
        raise KeyboardInterrupt


def _ask_hurry(signum: int, frame: Any) -> None:
    """SIGUSR2 from the parent (a second stop signal): stop now, skipping the final evaluation."""
    global _state, _stop_asked
    _stop_asked = True
    if _state in ("running", "stopping", "plotting"):
        _state = "stopping" if _state == "running" else _state
        raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    """A worker whose parent died (killed, even with SIGKILL) stops its variant by itself.

    A spawned worker's parent is the comparison (`parent`): it is gone when the worker's parent
    pid changes. A worker forked by the fork server watches its multiprocessing parent's
    sentinel instead (the comparison's end of a pipe: readable once that process has exited,
    even as an unreaped zombie), since its own parent is the fork server."""
    if os.getppid() != parent:
        sentinel = getattr(multiprocessing.parent_process(), "sentinel", None)
        if sentinel is not None:
            wait_ready([sentinel])
            os.kill(os.getpid(), STOP)
            return
    while os.getppid() == parent:
        time.sleep(POLL)
    os.kill(os.getpid(), STOP)


WORKER_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGHUP", "SIGTERM", "SIGUSR1",
                                                    "SIGUSR2") if hasattr(signal, n))


def _serve(conn: Connection, parent: int) -> None:
    """A worker process: run the variants the parent sends, one at a time, until told to end."""
    for sig in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)  # the parent forwards the terminal's signals
    signal.signal(signal.SIGTERM, _ask_stop)
    signal.signal(STOP, _ask_stop)
    signal.signal(HURRY, _ask_hurry)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent while it started this one
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError, KeyboardInterrupt):
                return
            if task is None:
                return
            result = _run_task(*task)
            try:
                conn.send(result)
            except (OSError, KeyboardInterrupt):
                return
    finally:
        # Every record it wrote is closed and synced: skip the interpreter's second-long
        # teardown of torch and matplotlib, so a stopped comparison ends promptly.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)


def _run_task(path: str, overrides: list[str], out: str, threads: int, plots: bool,
              place: tuple[str, str] | None = None) -> dict[str, Any]:
    """Run one config in this worker: {"run_dir", "error", "write_failed"}."""
    global _state
    if _stop_asked:
        return {"run_dir": None, "error": NOT_STARTED}
    started = time.time()
    cfg: Config | None = None
    _state = "running"
    try:
        from gradlab.runner import run_config  # torch: preloaded by the fork server, never
        # imported by the parent, which only plans and waits

        cfg = load_config(path, overrides)
        outcome = run_config(cfg, Path(out), threads=threads,
                             place=(Path(place[0]), place[1]) if place else None,
                             overrides=shown_overrides(overrides))
        _state = "idle"
    except KeyboardInterrupt:  # before its run directory existed, or just after it was done
        _state = "idle"
        found = _record_of(Path(place[0]) if place else Path(out) / cfg.name, os.getpid(),
                           started, finished=True) if cfg else None
        return {"run_dir": str(found) if found else None, "error": None if found else NOT_STARTED}
    except RecordWriteError as e:
        _state = "idle"
        return {"run_dir": str(e.run_dir) if e.completed else None, "error": str(e),
                "write_failed": True}
    except Exception as e:  # one variant's failure never stops the others
        _state = "idle"
        return {"run_dir": None, "error": f"{type(e).__name__}: {e}"}
    if plots and not _stop_asked:
        _state = "plotting"
        try:
            from gradlab.render.run_figures import plot_run  # matplotlib: only when drawing

            plot_run(outcome.path)
        except KeyboardInterrupt:  # stopped: the figures can be drawn later with `report`
            pass
        except Exception as e:  # the run is complete: a figure that fails must not lose it
            print(f"{outcome.path}: plots failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            _state = "idle"
    return {"run_dir": str(outcome.path), "error": None}


def shown_overrides(overrides: list[str]) -> list[str]:
    """The overrides a run records: the user's, not the `seed=N`/`seeds=null` a group adds
    for each of its seeds (the seed is in the run's config.yaml)."""
    return [o for o in overrides if not o.startswith(("seed=", "seeds="))]


def _record_of(parent: Path, pid: int | None, since: float,
               finished: bool = False) -> Path | None:
    """The run directory a given worker process made under `parent` (out/NAME, or a group's
    directory) since `since` (its summary holds the worker's pid): what a worker that died, or
    was stopped as it finished, left (with `finished`, only a record whose summary is final)."""
    found = []
    try:
        dirs = [d for d in parent.iterdir() if d.is_dir()]
    except OSError:
        return None
    for d in dirs:
        try:
            summary = read_summary(d) or {}
            if finished and summary.get("status") in (None, "running"):
                continue
            if summary.get("pid") == pid and run_started(d)[0].timestamp() >= int(since) - 1:
                found.append(d)
        except (CorruptRecord, OSError, ValueError):
            continue
    return max(found, key=run_started) if found else None


# ---------------------------------------------------------------- the comparison


def compare(paths: list[Path], out: Path, jobs: int | None = None,
            overrides: list[str] | None = None, reuse: bool = False, plots: bool = True,
            on_done: Callable[[Variant], None] | None = None,
            executor: ExecutorKind | None = None, pairs: bool = True,
            on_plan: Callable[[int], None] | None = None,
            cluster: Cluster | None = None,
            labels: Mapping[str, str] | None = None) -> list[Variant]:
    """Validate and run every config; return one Variant per path, in input order.

    A config with `seeds` is a group: one run per seed (`on_done` is called for each, and
    `on_plan` first with the number of runs). With `pairs`, a `versus:` claim's partner must
    be among the configs (else that config is invalid), and the paired claims are checked once
    every variant is done. With a `cluster` (`gradlab.cluster`), the runs are submitit jobs
    (a Slurm job array) instead of this process's pool. `labels`: how the overrides were
    typed (`config.load_config`), for the problems they cause."""
    overrides = overrides or []
    stopping.reset()
    variants = []
    for path in paths:
        try:
            cfg = load_config(path, overrides, labels)
            preflight(cfg, str(path))
            variants.append(Variant(path, config=cfg, overrides=overrides))
        except ConfigError as e:
            variants.append(Variant(path, error=str(e)))
    _refuse_shared_names(variants)
    if pairs:
        _refuse_lost_partners(variants)
    runs = [m for v in variants if v.config is not None for m in _plan(v)]
    if on_plan is not None:
        on_plan(len(runs) + sum(v.config is None for v in variants))
    todo = []
    for v in variants:
        if v.config is None:
            _finish(v, on_done)
        elif v.is_group:
            todo += _start_group(v, out, reuse, on_done)
        else:
            found = find_reusable(out, v.config) if reuse else None
            if found is not None:
                v.run_dir, v.reused = found, True
                _finish(v, on_done)
            else:
                todo.append(v)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(todo) or 1))
    threads = worker_threads(cores, jobs)
    run = _run_processes if (executor or EXECUTOR) == "process" else _run_threads
    if cluster is not None:  # the same tasks as submitit jobs: gradlab.cluster
        run = cluster.run
    stopped = bool(todo) and run(todo, jobs, threads, out, plots, on_done)
    for v in variants:
        v.interrupted = stopped
        if v.is_group:
            _finish_group(v)
    if pairs:
        _check_pairs(variants)
    return variants


def _plan(v: Variant) -> list[Variant]:
    """A variant's runs: itself, or one member per seed for a config with `seeds`."""
    assert v.config is not None
    if not v.config.seeds:
        return [v]
    v.members = [Variant(v.path, config=v.config.model_copy(update={"seed": s, "seeds": None}),
                         overrides=[*v.overrides, f"seed={s}", "seeds=null"], seed=s)
                 for s in v.config.seeds]
    return v.members


def _refuse_shared_names(variants: list[Variant]) -> None:
    """Two configs with one name (a copied file) would share records and rows: refused."""
    first: dict[str, Variant] = {}
    for v in variants:
        if v.config is None:
            continue
        if v.config.name in first:
            other = first[v.config.name].path
            v.error = str(ConfigError(str(v.path), [("name", f"'{v.config.name}' is also the "
                                                              f"name of {other}: give each "
                                                              "config its own name")]))
            v.config = None
        else:
            first[v.config.name] = v


def _refuse_lost_partners(variants: list[Variant]) -> None:
    """A paired claim needs its partner among the configs, run over the same seeds."""
    named = {v.config.name: v for v in variants if v.config is not None}
    for v in variants:
        if v.config is None:
            continue
        problems = []
        for spec in versus_specs(v.config.expect):
            partner = named.get(str(spec.get("partner")))
            if partner is None or partner.config is None:
                problems.append(f"the partner config '{spec.get('partner')}' is not among the "
                                "configs compared: run them together")
            elif (partner.config.seeds or [partner.config.seed]) != \
                    (v.config.seeds or [v.config.seed]):
                problems.append(f"the partner '{partner.name}' runs seeds "
                                f"{partner.config.seeds or [partner.config.seed]}, this config "
                                f"{v.config.seeds or [v.config.seed]}: a paired claim needs "
                                "the same seeds")
        if problems:
            v.error = str(ConfigError(str(v.path), [("expect.versus.partner", p)
                                                    for p in problems]))
            v.config = None


def _start_group(v: Variant, out: Path, reuse: bool,
                 on_done: Callable[[Variant], None] | None) -> list[Variant]:
    """Make a group's directory and hand out its seeds: each reused (with --reuse, a finished
    run of the identical config and seed) or to be run; return those to run. A group whose
    every seed is found in one earlier group of the same seeds is that group, reused."""
    assert v.config is not None and v.config.seeds
    found = {m.seed: find_reusable(out, m.config) for m in v.members if m.config} if reuse \
        else {}
    homes = {p.parent for p in found.values() if p is not None}
    if reuse and all(found.values()) and len(homes) == 1:
        home = homes.pop()
        if is_group_dir(home) and read_group(home).get("seeds") == v.config.seeds:
            v.run_dir, v.reused = home, True
            for m in v.members:
                m.run_dir, m.reused = found[m.seed], True
                _finish(m, on_done)
            return []
    v.run_dir = new_group_dir(out, v.config.name)
    write_group(v.run_dir, group_summary(v.run_dir, v.config.name, v.config.seeds, str(v.path),
                                         final=False))
    todo = []
    first = v.config.seeds[0]
    for m in v.members:
        assert m.seed is not None
        reusable = found.get(m.seed)
        if reusable is not None:
            m.run_dir, m.reused = link_seed(v.run_dir, m.seed, reusable), True
            _finish(m, on_done)
        else:
            m.place = (v.run_dir, seed_stem(m.seed))
            m.plots = m.seed == first  # figures for the first seed; `report` draws the others
            todo.append(m)
    return todo


def _finish_group(v: Variant) -> None:
    """group.json from the seeds' records on disk, and the claims checked over the seeds. A
    comparison stopped before some seeds started: those are `not run`, and no claim is
    checked on them; a group none of whose seeds started is no group (its directory goes)."""
    assert v.config is not None and v.config.seeds and v.run_dir is not None
    not_run = {m.seed for m in v.members if m.error == NOT_STARTED and m.seed is not None}
    if not_run and len(not_run) == len(v.members):
        # the group.json written at its start, and the directory if nothing else is in it
        (v.run_dir / GROUP_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            v.run_dir.rmdir()
        v.group, v.error, v.run_dir = None, NOT_STARTED, None
        return
    try:
        v.group = group_summary(v.run_dir, v.config.name, v.config.seeds, str(v.path),
                                not_run=not_run)
        write_group(v.run_dir, v.group)
    except OSError as e:
        v.error, v.write_failed = f"{v.run_dir}: group.json cannot be written: {e}", True
    v.reused = all(m.reused for m in v.members)
    v.expectations = check_seeds(v.config.expect, {
        seed: s for seed, s in v.summaries().items() if seed not in not_run})


def _check_pairs(variants: list[Variant]) -> None:
    """Every `versus:` claim, seed by seed against its partner's runs."""
    named = {v.config.name: v for v in variants if v.config is not None}
    # a partner a stopped comparison never started: nothing to hold a claim against
    unstarted = {name for name, w in named.items() if w.status == "not run"}
    for v in variants:
        if v.config is None or not versus_specs(v.config.expect) or v.status == "not run":
            continue
        v.expectations += [e for e in check_versus(
            v.config.expect, v.summaries(), {name: w.summaries() for name, w in named.items()})
            if e.partner not in unstarted]


def worker_threads(cores: int, jobs: int) -> int:
    """Each worker's share of the cores, capped by OMP_NUM_THREADS when the user set it: on a
    busy machine, torch threads that outnumber free cores slow a small net down many times."""
    threads = max(1, cores // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


class _Stop:
    """The stop signals this process receives while variants run: counted, acted on by the
    loop (a flag, never an exception, so collecting a finished variant is never cut short)."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in stopping.STOP_SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self.previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        stopping.note(signum)
        self.count += 1


@dataclass
class _Worker:
    proc: Any  # multiprocessing's SpawnProcess
    conn: Connection
    variant: Variant | None = None
    sent_at: float = 0.0


def _context(plots: bool) -> Any:
    """Where workers come from: the fork server, preloaded with what every worker imports
    (this module, the runner and torch; `torch._dynamo`, which torch.optim imports at a run's
    first optimiser step, a second or two; matplotlib when the workers draw figures); else (no
    fork server on this platform) spawn. Never a fork of this process (it imports no torch
    today, but a library caller's may hold torch threads)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # Read when the fork server starts (at the first worker): later calls change nothing. A
    # module that fails to import is skipped (the worker imports it as it would have).
    ctx.set_forkserver_preload(["gradlab.compare", "gradlab.runner", "torch._dynamo"]
                               + (["gradlab.render.run_figures"] if plots else []))
    return ctx


def _start_worker(ctx: Any) -> _Worker:
    """A fresh worker process. Stop signals are blocked while it starts, so it inherits them
    blocked and receives none before its own handlers are in place (it unblocks them). The
    fork server, started with the first worker, inherits them blocked too, and so does every
    worker it forks."""
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(theirs, os.getpid()), daemon=True)
    if not hasattr(signal, "pthread_sigmask"):
        proc.start()
    else:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    theirs.close()
    return _Worker(proc, ours)


def _signal(worker: _Worker, sig: int) -> None:
    if worker.proc.pid is not None and worker.proc.is_alive():
        try:
            os.kill(worker.proc.pid, sig)
        except ProcessLookupError:
            pass


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = stopping.name(-exitcode)
        oom = " (the kernel's out-of-memory killer sends it)" if -exitcode == signal.SIGKILL \
            else ""
        return f"its worker process was killed by {name}{oom}"
    return f"its worker process exited with code {exitcode}"


def _home(v: Variant, out: Path) -> Path:
    """Where a variant's run directory is made: out/NAME, or its group's directory."""
    assert v.config is not None
    return v.place[0] if v.place else out / v.config.name


def _task(v: Variant, out: Path, threads: int, plots: bool) -> tuple[Any, ...]:
    """What a worker is sent to run one variant (`_run_task`'s arguments)."""
    place = (str(v.place[0]), v.place[1]) if v.place else None
    return (str(v.path), v.overrides, str(out), threads, plots and v.plots, place)


def _run_processes(todo: list[Variant], jobs: int, threads: int, out: Path, plots: bool,
                   on_done: Callable[[Variant], None] | None) -> bool:
    """Run variants in up to `jobs` worker processes; return whether a signal stopped them."""
    ctx = _context(plots)
    queue = deque(todo)
    workers: list[_Worker] = []
    acted = 0  # stop signals acted on
    deadline: float | None = None

    def collect(w: _Worker) -> None:
        result = None
        try:
            if w.conn.poll():
                result = w.conn.recv()
        except (EOFError, OSError):
            pass
        if result is None:
            w.proc.join(0.5)  # its pipe closed: it is exiting
            if w.proc.is_alive():
                return  # woken for nothing
        v, w.variant = w.variant, None
        assert v is not None and v.config is not None
        if result is None:  # the worker died with this variant: keep what its record says
            w.proc.join(1)
            found = _record_of(_home(v, out), w.proc.pid, w.sent_at)
            v.run_dir, v.error = found, _death(w.proc.exitcode)
        else:
            v.run_dir = Path(result["run_dir"]) if result["run_dir"] else None
            v.error, v.write_failed = result["error"], bool(result.get("write_failed"))
        _finish(v, on_done)

    with _Stop() as stop:
        try:
            while True:
                if stop.count > acted:
                    acted = stop.count
                    if queue:
                        for v in queue:
                            v.error = NOT_STARTED
                            _finish(v, on_done)
                        queue.clear()
                    busy = [w for w in workers if w.variant is not None]
                    if acted == 1:
                        for w in busy:
                            _signal(w, STOP)
                    elif acted == 2:
                        for w in busy:
                            _signal(w, HURRY)
                        deadline = time.monotonic() + STOP_GRACE
                    else:
                        deadline = time.monotonic()
                if deadline is not None and time.monotonic() >= deadline:
                    for w in workers:
                        if w.variant is not None:
                            _signal(w, signal.SIGKILL)
                workers = [w for w in workers if w.variant is not None or w.proc.is_alive()]
                while queue:  # hand out work: to an idle worker, or a new one
                    idle = next((w for w in workers if w.variant is None), None)
                    if idle is None and len(workers) < jobs:
                        idle = _start_worker(ctx)
                        workers.append(idle)
                    if idle is None:
                        break
                    v = queue.popleft()
                    idle.variant, idle.sent_at = v, time.time()
                    try:
                        idle.conn.send(_task(v, out, threads, plots))
                    except OSError:
                        pass  # it died already: collected below as a death
                busy = [w for w in workers if w.variant is not None]
                if not busy:
                    break
                ready = set(wait_ready([w.conn for w in busy] + [w.proc.sentinel for w in busy],
                                       timeout=POLL))
                for w in busy:
                    if w.conn in ready or w.proc.sentinel in ready:
                        collect(w)
        finally:
            _shut_down(workers)
    return acted > 0


def _shut_down(workers: list[_Worker]) -> None:
    """End every worker: idle ones are told to; any still running after a moment is killed."""
    for w in workers:
        try:
            w.conn.send(None)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(1)
        w.conn.close()


def _run_threads(todo: list[Variant], jobs: int, threads: int, out: Path, plots: bool,
                 on_done: Callable[[Variant], None] | None) -> bool:
    """One variant at a time in a thread of this process, leaving its torch threads as they
    are (tests, embedding). A stop signal drops the queued variants; the running one ends."""
    pool = ThreadPoolExecutor(max_workers=1)
    futures: dict[Future[dict[str, Any]], Variant] = {
        pool.submit(_run_in_thread, *_task(v, out, threads, plots)): v for v in todo}
    pending = set(futures)
    with _Stop() as stop:
        try:
            while pending:
                done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
                if stop.count:
                    for fut in pending:
                        fut.cancel()
                    pending = {f for f in pending if not f.cancelled()}
                for fut in done:
                    v, result = futures[fut], fut.result()
                    v.run_dir = Path(result["run_dir"]) if result["run_dir"] else None
                    v.error, v.write_failed = result["error"], bool(result.get("write_failed"))
                    _finish(v, on_done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for fut, v in futures.items():
        if fut.cancelled():
            v.error = NOT_STARTED
    return stop.count > 0


def _run_in_thread(path: str, overrides: list[str], out: str, threads: int, plots: bool,
                   place: tuple[str, str] | None) -> dict[str, Any]:
    try:
        from gradlab.runner import run_config  # torch, as in a worker process

        outcome = run_config(load_config(path, overrides), Path(out),
                             place=(Path(place[0]), place[1]) if place else None,
                             overrides=shown_overrides(overrides))
    except RecordWriteError as e:
        return {"run_dir": str(e.run_dir) if e.completed else None, "error": str(e),
                "write_failed": True}
    except Exception as e:
        return {"run_dir": None, "error": f"{type(e).__name__}: {e}"}
    if plots:
        try:
            from gradlab.render.run_figures import plot_run

            plot_run(outcome.path)
        except Exception as e:
            print(f"{outcome.path}: plots failed: {type(e).__name__}: {e}", file=sys.stderr)
    return {"run_dir": str(outcome.path), "error": None}


def _finish(v: Variant, on_done: Callable[[Variant], None] | None) -> None:
    """Read what the variant's record says (summary.json only: never a whole layers.csv)."""
    if v.run_dir is not None:
        try:
            v.record = Record(v.run_dir, read_summary(v.run_dir), {}, [], [])
            if v.record.status in ("incomplete", "running"):  # its worker died: what it logged
                v.record.metrics = read_rows(v.run_dir / "metrics.csv", lane_column="test_loss")
        except CorruptRecord as e:
            v.record, v.error = None, str(e)
        if v.config is not None and v.record is not None and v.seed is None:
            v.expectations = check(v.config.expect, v.record.summary)  # a group checks its own
    if on_done is not None:
        on_done(v)


def comparison_rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """One flat row per variant: what comparison.csv holds and the table shows."""
    rows = []
    for v in variants:
        s = v.summary
        metrics = s.get("final_metrics") or {}
        test_key = "test_accuracy" if "test_accuracy" in metrics else "test_loss"
        test = metrics.get(test_key)
        verdicts = s.get("verdicts") or []
        steps = s.get("steps_done")
        if v.is_group:  # the most steps a seed ran: a count, never a mean (a divergence differs)
            done = [(m.record.summary or {}).get("steps_done") for m in v.members if m.record]
            steps = max((d for d in done if isinstance(d, int)), default=None)
        if v.record is not None and v.record.status in ("incomplete", "running"):
            logged = [m["step"] for m in v.record.metrics if is_training_row(m)]
            steps = logged[-1] + 1 if logged else 0  # the steps its record shows
        failed = [e.describe() for e in v.expectations if not e.ok]
        problem = v.error or s.get("error") or ""
        if s.get("status") == "diverged" and s.get("first_nonfinite"):
            where = s["first_nonfinite"]
            problem = (f"NaN/Inf in {where.get('layer') or where.get('module') or where.get('what')}"
                       f" at step {where.get('step')}")
        rows.append({
            "variant": v.name,
            "status": v.status,
            "reused": "yes" if v.reused else "",
            "steps": steps,
            "final_loss": s.get("final_loss"),
            "test_metric": test,
            "grad_ratio_init": s.get("grad_ratio_init"),
            "grad_ratio_final": s.get("grad_ratio_final"),
            "weakest_grad": s.get("grad_norm_min_final"),
            "verdict": top_verdicts(v.group) if v.group else
            (verdicts[0]["kind"] if verdicts else ""),
            "steps_per_second": s.get("steps_per_second"),
            "expect": "" if v.expect_ok is None else ("held" if v.expect_ok else "FAILED"),
            "problems": "; ".join(failed + ([problem] if problem else [])),
            "run_dir": str(v.run_dir) if v.run_dir else "",
            "config": str(v.path),
            "seeds": " ".join(str(m.seed) for m in v.members),
            "final_loss_ci": _half_width(v, "final_loss"),
            "test_metric_ci": _half_width(v, f"final_metrics.{test_key}"),
            "verdict_seeds": _verdict_agreement(v),
            "partner": _partner(v),
            "paired": " ".join(  # "–": not checked (a partner that never started)
                ("held" if all(e.ok for e in mine) else "FAILED") if mine else "–"
                for name in _partner(v).split()
                for mine in [[e for e in v.expectations if e.partner == name]]),
        })
    _mark_overlaps(rows, variants)
    return rows


def _half_width(v: Variant, key: str) -> float | None:
    """Half the width of a group's 95% interval of the mean of `key` (None for one run)."""
    stats = ((v.group or {}).get("fields") or {}).get(key) or {}
    lo, hi = (stats.get("ci95") or [None, None])
    return (hi - lo) / 2 if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) \
        else None


def _partner(v: Variant) -> str:
    """The partners of a variant's paired claims, space-separated."""
    specs = versus_specs(v.config.expect) if v.config is not None else []
    return " ".join(str(s.get("partner")) for s in specs)


def _verdict_agreement(v: Variant) -> str:
    """For a group: how many of its seeds share the top verdict most of them have (`2/3`),
    the first that `verdict` (`top_verdicts`) names."""
    kinds = [(k or [""])[0] for k in ((v.group or {}).get("verdicts") or {}).values()]
    if not kinds:
        return ""
    return f"{max(kinds.count(k) for k in kinds)}/{len(kinds)}"


def _mark_overlaps(rows: list[dict[str, Any]], variants: list[Variant]) -> None:
    """`overlaps`: the variants whose 95% interval of the test metric overlaps this one's
    (groups only): a difference between them is not established by these seeds. A variant in a
    paired claim is compared with its partners (both ways); one in no pair with every other
    variant of the same task."""
    related: dict[str, set[str]] = {}
    for row in rows:
        for other in (row.get("partner") or "").split():
            related.setdefault(row["variant"], set()).add(other)
            related.setdefault(other, set()).add(row["variant"])
    spans = {}
    for row, v in zip(rows, variants):
        ci = row["test_metric_ci"]
        if ci is not None and isinstance(row["test_metric"], (int, float)):
            spans[row["variant"]] = (v.summary.get("task"), row["test_metric"] - ci,
                                     row["test_metric"] + ci)
    for row in rows:
        mine = spans.get(row["variant"])
        against = related.get(row["variant"])
        row["overlaps"] = "" if mine is None else " ".join(
            name for name, (task, lo, hi) in spans.items()
            if name != row["variant"] and task == mine[0] and lo <= mine[2] and mine[1] <= hi
            and (against is None or name in against))


def write_record(rows: list[dict[str, Any]], out: Path) -> Path:
    """Store the comparison under `out` (comparison.csv, comparison.md, variants/);
    RecordWriteError if it cannot be written (nothing half-written is left)."""
    return write_comparison(rows, out, comparison_markdown(rows))


def mean_summary(group: dict[str, Any]) -> dict[str, Any]:
    """A group's summary as a run's looks: each numeric field the mean over the seeds (dotted
    fields nested again), the group's status and task. No verdicts: each seed has its own
    (`record.group.top_verdicts` says how many seeds share each)."""
    summary: dict[str, Any] = {"name": group.get("name"), "status": group.get("status"),
                               "task": group.get("task")}
    for key, stats in (group.get("fields") or {}).items():
        if "mean" not in stats:
            continue
        node = summary
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = stats["mean"]
    return summary
