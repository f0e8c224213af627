"""Running many configs in parallel processes and collecting their records side by side.

`compare(paths, ...)` validates every config, trains the valid ones in worker processes
(each limited to its share of the cores), and returns one row per variant; a variant
that fails never stops the others. `write_comparison` stores the compare record and
`comparison_table` renders its rows. Reading results goes through `record.py` only.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlab.config import Config, ConfigError, config_hash, load_config
from gradlab.expect import Expectation, check
from gradlab.record import Record, is_run_dir, read_record, unique_dir, utc_stamp, write_atomic
from gradlab.report import num

NOT_STARTED = "not started: the comparison was interrupted"
COLUMNS = ("variant", "status", "steps", "final_loss", "test_metric", "grad_ratio_init",
           "grad_ratio_final", "weakest_grad", "verdict", "steps_per_second", "expect", "reused",
           "problems", "run_dir", "config")


def config_paths(items: Iterable[Path]) -> list[Path]:
    """YAML files named directly, and every *.yaml/*.yml in named directories, sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            paths.append(item)
    return paths


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
        summary = read_record(run_dir).summary or {}
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
        from gradlab.runner import run_config

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
        from gradlab import plots

        plots.plot_run(run_dir)
    except Exception as e:  # the run is complete: a figure that fails must not lose it
        import sys

        print(f"{run_dir}: plots failed: {type(e).__name__}: {e}", file=sys.stderr)


def compare(paths: list[Path], out: Path, jobs: int | None = None,
            overrides: list[str] | None = None, reuse: bool = False, plots: bool = True,
            on_done: Callable[[Variant], None] | None = None) -> list[Variant]:
    """Validate and run every config; return one Variant per path, in input order."""
    overrides = overrides or []
    variants = []
    for path in paths:
        try:
            variants.append(Variant(path, config=load_config(path, overrides)))
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
    if todo and _run_pool(todo, jobs, threads, overrides, out, plots, on_done):
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
              plots: bool, on_done: Callable[[Variant], None] | None) -> bool:
    """Run variants in worker processes; return whether Ctrl-C stopped them. Then queued
    variants are dropped and running ones stopped cleanly (their records say
    `interrupted`), and every variant that finished is still collected."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding torch threads
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker)
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


def _stop_workers(pool: ProcessPoolExecutor) -> None:
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


def write_comparison(rows: list[dict[str, Any]], out: Path) -> Path:
    """The compare record: comparison.csv, comparison.md and links to every run directory."""
    path = unique_dir(Path(out), f"compare-{utc_stamp()}")
    lines = []
    with (path / "comparison.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    head = ("variant", "status", "steps", "final loss", "test metric", "grad ratio init",
            "grad ratio end", "weakest grad", "verdict", "steps/s", "expect")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["variant"], r["status"], num(r["steps"]), num(r["final_loss"]),
                 num(r["test_metric"]), num(r["grad_ratio_init"], 2),
                 num(r["grad_ratio_final"], 2), num(r["weakest_grad"], 2), r["verdict"],
                 num(r["steps_per_second"]), r["expect"] or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    problems = [f"- **{r['variant']}**: {r['problems']}" for r in rows if r["problems"]]
    text = "\n".join(lines) + "\n" + ("\nProblems:\n\n" + "\n".join(problems) + "\n" if problems else "")
    write_atomic(path / "comparison.md", text)
    links = path / "variants"
    links.mkdir()
    for r in rows:
        if r["run_dir"]:
            target = os.path.relpath(Path(r["run_dir"]).resolve(), links.resolve())
            link = links / r["variant"]
            if not link.exists() and not link.is_symlink():
                link.symlink_to(target)
    return path


def read_comparison(path: Path) -> list[dict[str, Any]]:
    with (Path(path) / "comparison.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("steps", "final_loss", "test_metric", "grad_ratio_init", "grad_ratio_final",
                  "weakest_grad", "steps_per_second"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
        if r["steps"] is not None:
            r["steps"] = int(r["steps"])  # a count: re-printed as 1000, as the run printed it
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> RenderableType:
    """The side-by-side table, readable at 100 columns, with each row's problems below."""
    # SIMPLE_HEAD already puts a space between columns: no padding, so 11 columns fit in 100
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=0, show_edge=False,
                  title="comparison", title_justify="left")
    for col, justify in (("variant", "left"), ("status", "left"), ("steps", "right"),
                         ("final\nloss", "right"), ("test", "right"), ("ratio\ninit", "right"),
                         ("ratio\nend", "right"), ("min\n|grad|", "right"),
                         ("verdict", "left"), ("steps\n/s", "right"), ("claims", "left")):
        # when a row is too wide, only the names shrink (with an ellipsis), never a number
        shrinks = col in ("variant", "verdict")
        table.add_column(col, justify=justify, no_wrap=not shrinks,  # type: ignore[arg-type]
                         overflow="ellipsis")
    for r in rows:
        status = r["status"]
        style = "green" if status == "completed" else (
            "red" if status in ("failed", "invalid", "diverged") else "yellow")
        expect = {"held": Text("held", "green"), "FAILED": Text("FAILED", "bold red")}.get(
            r["expect"], Text("–", "dim"))
        table.add_row(
            r["variant"], Text(status, style), num(r["steps"]), _short(r["final_loss"]),
            _short(r["test_metric"]), _short(r["grad_ratio_init"]),
            _short(r["grad_ratio_final"]), _short(r["weakest_grad"]), r["verdict"],
            _rate(r["steps_per_second"]), expect,
        )
    # the legend sits below the table rather than in its caption, which wraps at the table's width
    notes = Text("ratio: first layer's gradient norm / last layer's; min |grad|: the weakest "
                 "layer's at the end;\ntest: accuracy for classification, loss otherwise; "
                 "claims: the config's expect: block\n", style="dim")
    for r in rows:
        if r["problems"]:
            notes.append(f"{r['variant']}: ", style="bold")
            notes.append(f"{r['problems']}\n")
    return Group(table, notes)


def _short(x: float | None) -> str:
    """Two significant digits with a compact exponent (2.6e4, 4.6e-11): the table's width."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].strip("+") + m[2], num(x, 2))


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def render_comparison_dir(path: Path) -> RenderableType:
    """Re-render a compare record's table from its comparison.csv (no training)."""
    return Group(comparison_table(read_comparison(path)), Text(str(path), style="dim"))
