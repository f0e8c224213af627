"""Running many configs in parallel and collecting their records side by side (a driver).

`compare(paths, ...)` validates every config, trains the valid ones in worker processes
(each limited to its share of the cores), and returns one `Variant` per config; a variant
that fails never stops the others. `comparison_rows` flattens them for the table and
`write_record` stores the compare record (`record.comparison`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gradlab.analyse.expect import Expectation, check
from gradlab.build.budget import preflight
from gradlab.config import Config, ConfigError, config_hash, load_config
from gradlab.record.comparison import write_comparison
from gradlab.record.reader import Record, is_run_dir, read_record, read_summary
from gradlab.render.compare_table import comparison_markdown
from gradlab.render.run_figures import plot_run
from gradlab.runner import run_config

# Where variants run: worker processes (the default, in parallel), or threads of this
# process (for tests and embedding: no spawn, no signals).
ExecutorKind = Literal["process", "thread"]
EXECUTOR: ExecutorKind = "process"  # the default of `compare(executor=None)`

NOT_STARTED = "not started: the comparison was interrupted"


@dataclass
class Variant:
    """One config of a comparison and what became of it."""

    path: Path
    config: Config | None = None
    error: str | None = None  # a config error, or why the run could not start
    run_dir: Path | None = None
    reused: bool = False
    record: Record | None = None
    expectations: list[Expectation] = field(default_factory=list)
    interrupted: bool = False  # the comparison this variant belongs to was stopped by Ctrl-C

    @property
    def name(self) -> str:
        return self.config.name if self.config else self.path.stem

    @property
    def status(self) -> str:
        if self.config is None:
            return "invalid"
        if self.record is None:
            return "not run" if self.error == NOT_STARTED else "failed"
        return self.record.status

    @property
    def expect_ok(self) -> bool | None:
        if not self.expectations:
            return None
        return all(e.ok for e in self.expectations)


def find_reusable(out: Path, cfg: Config) -> Path | None:
    """A completed run under `out` whose resolved config is identical (same config_hash)."""
    wanted = config_hash(cfg)
    parent = Path(out) / cfg.name
    if not parent.is_dir():
        return None
    for run_dir in sorted(parent.iterdir(), reverse=True):
        if not is_run_dir(run_dir):
            continue
        summary = read_summary(run_dir) or {}
        if summary.get("status") == "completed" and summary.get("config_hash") == wanted:
            return run_dir
    return None


_busy = False  # in a worker: whether it is running a variant right now


def _on_terminate(signum: int, frame: Any) -> None:
    """In a worker, the parent's stop request interrupts a running variant (only once)."""
    global _busy
    if _busy:
        _busy = False
        raise KeyboardInterrupt


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; only the parent acts on it, then asks each
    # worker with SIGTERM, so a record is never interrupted twice mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_terminate)


def _worker(path: str, overrides: list[str], out: str, threads: int,
            plots: bool) -> tuple[str | None, str | None]:
    """Run one config in a worker process: (run directory, error text)."""
    global _busy
    _busy = True
    try:
        cfg = load_config(path, overrides)
        outcome = run_config(cfg, Path(out), threads=threads)
        _busy = False
        if plots:
            _plot(outcome.path)
        return str(outcome.path), None
    except KeyboardInterrupt:  # stopped before its run directory existed
        return None, NOT_STARTED
    except Exception as e:  # one variant's failure never stops the others
        return None, f"{type(e).__name__}: {e}"
    finally:
        _busy = False


def _plot(run_dir: Path) -> None:
    try:
        plot_run(run_dir)
    except Exception as e:  # the run is complete: a figure that fails must not lose it
        print(f"{run_dir}: plots failed: {type(e).__name__}: {e}", file=sys.stderr)


def compare(paths: list[Path], out: Path, jobs: int | None = None,
            overrides: list[str] | None = None, reuse: bool = False, plots: bool = True,
            on_done: Callable[[Variant], None] | None = None,
            executor: ExecutorKind | None = None) -> list[Variant]:
    """Validate and run every config; return one Variant per path, in input order."""
    overrides = overrides or []
    variants = []
    for path in paths:
        try:
            cfg = load_config(path, overrides)
            preflight(cfg, str(path))
            variants.append(Variant(path, config=cfg))
        except ConfigError as e:
            variants.append(Variant(path, error=str(e)))
    todo = []
    for v in variants:
        found = find_reusable(out, v.config) if (reuse and v.config) else None
        if found is not None:
            v.run_dir, v.reused = found, True
            _finish(v, on_done)
        elif v.config is not None:
            todo.append(v)
        else:
            _finish(v, on_done)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(todo) or 1))
    threads = worker_threads(cores, jobs)
    if todo and _run_pool(todo, jobs, threads, overrides, out, plots, on_done,
                          executor or EXECUTOR):
        for v in variants:
            v.interrupted = True
    return variants


def worker_threads(cores: int, jobs: int) -> int:
    """Each worker's share of the cores, capped by OMP_NUM_THREADS when the user set it: on a
    busy machine, torch threads that outnumber free cores slow a small net down many times."""
    threads = max(1, cores // jobs)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def _run_pool(todo: list[Variant], jobs: int, threads: int, overrides: list[str], out: Path,
              plots: bool, on_done: Callable[[Variant], None] | None,
              executor: ExecutorKind = "process") -> bool:
    """Run variants in worker processes; return whether Ctrl-C stopped them. Then queued
    variants are dropped and running ones stopped cleanly (their records say
    `interrupted`), and every variant that finished is still collected."""
    pool: Executor
    if executor == "process":
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding torch threads
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker)
    else:  # one variant at a time, leaving this process's torch threads as they are
        pool, threads = ThreadPoolExecutor(max_workers=1), 0
    futures: dict[Future[tuple[str | None, str | None]], Variant] = {
        pool.submit(_worker, str(v.path), overrides, str(out), threads, plots): v for v in todo
    }
    pending = set(futures)
    interrupted = False

    def on_ctrl_c(signum: int, frame: Any) -> None:
        # A flag, not an exception: KeyboardInterrupt could strike while a finished variant
        # is collected, and then the pool would wait for the running ones forever.
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        interrupted = True

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_ctrl_c) if in_main else None
    try:
        while pending:
            # poll, so Ctrl-C is acted on soon, and a variant already handed to a worker
            # when it came is stopped too
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if interrupted:
                for fut in pending:
                    fut.cancel()
                pending = {f for f in pending if not f.cancelled()}
                _stop_workers(pool)
            for fut in done:
                v = futures[fut]
                try:
                    run_dir, error = fut.result()
                except Exception as e:  # the worker process itself died
                    run_dir, error = None, f"worker died: {type(e).__name__}: {e}"
                v.run_dir = Path(run_dir) if run_dir else None
                v.error = error
                _finish(v, on_done)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        pool.shutdown(wait=True, cancel_futures=True)
    for fut, v in futures.items():
        if fut.cancelled():
            v.error = NOT_STARTED
    return interrupted


def _stop_workers(pool: Executor) -> None:
    """Ask every worker to stop the variant it runs; idle workers ignore the request."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        if proc.is_alive() and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _finish(v: Variant, on_done: Callable[[Variant], None] | None) -> None:
    if v.run_dir is not None:
        v.record = read_record(v.run_dir)
        if v.config is not None:
            v.expectations = check(v.config.expect, v.record.summary)
    if on_done is not None:
        on_done(v)


# ---------------------------------------------------------------- the comparison


def comparison_rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """One flat row per variant: what comparison.csv holds and the table shows."""
    rows = []
    for v in variants:
        s = (v.record.summary if v.record else None) or {}
        metrics = s.get("final_metrics") or {}
        test = metrics.get("test_accuracy", metrics.get("test_loss"))
        verdicts = s.get("verdicts") or []
        failed = [e.describe() for e in v.expectations if not e.ok]
        problem = v.error or s.get("error") or ""
        if s.get("status") == "diverged" and s.get("first_nonfinite"):
            where = s["first_nonfinite"]
            problem = f"NaN/Inf in {where.get('layer') or where.get('what')} at step {where.get('step')}"
        rows.append({
            "variant": v.name,
            "status": v.status,
            "reused": "yes" if v.reused else "",
            "steps": s.get("steps_done"),
            "final_loss": s.get("final_loss"),
            "test_metric": test,
            "grad_ratio_init": s.get("grad_ratio_init"),
            "grad_ratio_final": s.get("grad_ratio_final"),
            "weakest_grad": s.get("grad_norm_min_final"),
            "verdict": verdicts[0]["kind"] if verdicts else "",
            "steps_per_second": s.get("steps_per_second"),
            "expect": "" if v.expect_ok is None else ("held" if v.expect_ok else "FAILED"),
            "problems": "; ".join(failed + ([problem] if problem else [])),
            "run_dir": str(v.run_dir) if v.run_dir else "",
            "config": str(v.path),
        })
    return rows



def write_record(rows: list[dict[str, Any]], out: Path) -> Path:
    """Store the comparison under `out` (comparison.csv, comparison.md, variants/)."""
    return write_comparison(rows, out, comparison_markdown(rows))

