"""The `gradlab` command line: parse, call one library function, print.

Heavy modules (torch, the trainer) are imported inside the commands that need them, so
`gradlab validate` and `gradlab --help` stay instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from gradlab.config import ConfigError, load_config

if TYPE_CHECKING:  # the events are only annotations here: the CLI starts without torch
    from gradlab.train.events import Evaluated, Logged, StepEnd

app = typer.Typer(
    help="gradlab: a laboratory for vanishing and exploding gradients in deep networks.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)


@app.callback()
def _consoles() -> None:
    """Fresh consoles for each invocation, sized by the terminal (or COLUMNS) it runs in."""
    global out_console, err_console
    # Piped output (CI, files) gets 100 columns rather than rich's 80, so tables stay whole.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 100
    out_console, err_console = Console(width=width), Console(stderr=True)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config key: --set model.depth=20 (repeatable; value is YAML).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Directory that run records go under.")]
NoPlotsOpt = Annotated[bool, typer.Option("--no-plots", help="Draw no figures (RUN/plots/*.png).")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _overrides(sets: list[str] | None, steps: int | None, seed: int | None,
               device: str | None) -> list[str]:
    items = list(sets or [])
    if steps is not None:
        items += [f"train.steps={steps}", "train.epochs=null"]
    if seed is not None:
        items.append(f"seed={seed}")
    if device is not None:
        items.append(f"device={device}")
    return items


class Progress:
    """Turns the trainer's step events into a live progress bar on stderr."""

    def __init__(self, name: str):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]}  |g| {task.fields[grad]}"),
                       TimeRemainingColumn(), console=err_console, transient=True)
        self.task = self.bar.add_task(name, total=None, loss="–", grad="–")

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def on_step_end(self, event: StepEnd) -> None:
        if event.step % 5 == 0 or event.step == event.total - 1:
            self.bar.update(self.task, total=event.total, completed=event.step + 1,
                            loss=f"{event.loss:.4g}", grad=f"{event.grad_norm:.3g}")

    def on_phase_start(self, phase: str) -> None:
        pass

    def on_eval_end(self, event: Evaluated) -> None:
        pass

    def on_log(self, event: Logged) -> None:
        pass


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The YAML file describing the variant.",
                                           dir_okay=False)],
    device: Annotated[str | None, typer.Option(
        help="auto, cpu or cuda (overrides the config's device).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (overrides the config).")] = None,
    out: OutOpt = Path("runs"),
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print summary.json to stdout instead of the report.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    all_layers: Annotated[bool, typer.Option(
        "--all-layers", help="Show every layer in the table.")] = False,
    no_plots: NoPlotsOpt = False,
) -> None:
    """Train one variant, probe every layer, write a run record and report it."""
    try:
        cfg = load_config(config, _overrides(set_, steps, seed, device))
    except ConfigError as e:
        raise _fail(str(e)) from None
    from gradlab.record.reader import read_record
    from gradlab.render.report import run_report
    from gradlab.runner import run_config

    show_bar = not quiet and not as_json and err_console.is_terminal
    try:
        if show_bar:
            with Progress(cfg.name) as bar:
                outcome = run_config(cfg, out, (bar,))
        else:
            outcome = run_config(cfg, out)
    except ConfigError as e:  # found once the data is read, e.g. a file dataset's columns
        raise _fail(str(ConfigError(str(config), e.problems))) from None
    except OSError as e:  # the run directory cannot be created under --out
        raise _fail(f"{config}: --out {out}: cannot create a run record there: "
                    f"{e.strerror or e}") from None
    except KeyboardInterrupt:
        raise _fail("interrupted before training started; no record was completed", 130) from None
    except Exception as e:  # before training began, so there is no record to keep it in
        raise _fail(f"{config}: failed before training: {type(e).__name__}: {e}", 1) from None
    if as_json:
        sys.stdout.write(json.dumps(json.loads((outcome.path / "summary.json").read_text()),
                                    indent=2) + "\n")
    else:
        out_console.print(run_report(read_record(outcome.path), all_layers))
    if not no_plots:
        _draw_plots(outcome.path, quiet=as_json)
    if outcome.summary["status"] == "interrupted":
        raise typer.Exit(130)
    if outcome.summary["status"] == "failed":
        err_console.print(f"run failed: {outcome.summary['error']} (record: {outcome.path})",
                          style="red", markup=False)
        raise typer.Exit(1)


@app.command()
def compare(
    paths: Annotated[list[Path], typer.Argument(
        help="Config files, or directories whose *.yaml files are all run.")],
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Parallel processes (default: the number of cores).")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Check each config's expect: block; exit 1 if any claim fails.")] = False,
    reuse: Annotated[bool, typer.Option(
        "--reuse", help="Skip a config whose identical resolved config already has a "
                        "completed run under --out.")] = False,
    out: OutOpt = Path("runs"),
    set_: SetOpt = None,
    steps: Annotated[int | None, typer.Option(help="Training steps for every variant.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for every variant.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda for every variant.")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Draw no figures.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Run many variants in parallel and set them side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gradlab import compare as comparing
    from gradlab.config.load import config_paths
    from gradlab.render.compare_table import comparison_table

    config_files = config_paths(paths)
    missing = [p for p in paths if not p.exists()]
    if missing or not config_files:
        raise _fail(f"{missing[0] if missing else paths[0]}: no such config file or directory"
                    if missing else "no *.yaml configs found in " + ", ".join(map(str, paths)))
    bar = Progress("compare", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True, disable=quiet)
    task = bar.add_task("compare", total=len(config_files))

    def done(v: comparing.Variant) -> None:
        mark = {"completed": "✓", "diverged": "✗"}.get(v.status, "!")
        secs = ((v.record.summary or {}).get("seconds") if v.record else None)
        took = f" in {secs:.1f} s" if isinstance(secs, (int, float)) else ""
        reused = " (reused)" if v.reused else ""
        if not quiet:
            err_console.print(f"{mark} {v.name}: {v.status}{reused}{took}", highlight=False,
                              markup=False)
        bar.advance(task)

    with bar:
        variants = comparing.compare(config_files, out, jobs, _overrides(set_, steps, seed, device),
                                     reuse, not no_plots, done)
    rows = comparing.comparison_rows(variants)
    record_dir = comparing.write_record(rows, out)
    out_console.print(comparison_table(rows))
    out_console.print(f"compare record: {record_dir}", style="dim", highlight=False,
                      soft_wrap=True)
    _draw_comparison(record_dir, draw=not no_plots)
    invalid = [v for v in variants if v.status == "invalid"]
    for v in invalid:
        err_console.print(v.error, style="red", markup=False, highlight=False, soft_wrap=True)
    broken = [(v, e) for v in variants for e in v.expectations if not e.ok] if check else []
    if check:
        if broken:
            out_console.print(f"{len(broken)} expectation(s) failed:", style="bold red")
            for v, e in broken:
                out_console.print(f"  {v.name}: {e.describe()}", markup=False, highlight=False)
        else:
            held = sum(len(v.expectations) for v in variants)
            out_console.print(f"all {held} expectations held", style="green")
    if any(v.interrupted for v in variants):
        err_console.print("interrupted: the comparison covers the variants that finished",
                          style="yellow")
        raise typer.Exit(130)
    if invalid:
        raise typer.Exit(2)
    if broken or any(v.status == "failed" for v in variants):
        raise typer.Exit(1)


@app.command()
def validate(
    configs: Annotated[list[Path], typer.Argument(help="YAML files (or directories of them) to check.")],
    set_: SetOpt = None,
) -> None:
    """Check configs without training: every problem, with its key path."""
    from gradlab.config.load import config_paths

    problems = 0
    for path in config_paths(configs):
        try:
            cfg = load_config(path, set_ or [])
            from gradlab.build.budget import preflight  # torch, only for a config the schema took

            preflight(cfg, str(path))
            out_console.print(f"{path}: ok", markup=False, highlight=False, soft_wrap=True)
        except ConfigError as e:
            problems += 1
            err_console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(
        help="A run directory (runs/NAME/STAMP), or a compare record (runs/compare-STAMP).",
        file_okay=False)],
    all_layers: Annotated[bool, typer.Option("--all-layers", help="Show every layer in the table.")] = False,
    no_plots: NoPlotsOpt = False,
) -> None:
    """Re-print a run's report from its record and redraw its plots; no training."""
    from gradlab.record.comparison import is_comparison_dir
    from gradlab.record.reader import is_run_dir, read_record
    from gradlab.render.report import run_report

    if is_comparison_dir(run_dir):
        from gradlab.render.compare_table import render_comparison_dir

        out_console.print(render_comparison_dir(run_dir))
        _draw_comparison(run_dir, draw=not no_plots)
        return
    if not is_run_dir(run_dir):
        raise _fail(f"{run_dir}: not a run directory (no summary.json or metrics.csv); "
                    f"`gradlab runs` lists the runs")
    out_console.print(run_report(read_record(run_dir), all_layers))
    if not no_plots:
        _draw_plots(run_dir)


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="Directory that run records are under.",
                                         file_okay=False)] = Path("runs"),
) -> None:
    """List the runs under a directory, newest first: name, status, date, steps, loss, verdict."""
    from gradlab.render.listing import run_list

    if not root.is_dir():
        raise _fail(f"{root}: no such directory")
    out_console.print(run_list(root))


def _draw_plots(run_dir: Path, quiet: bool = False) -> None:
    """Draw a run's figures into RUN/plots/; a plotting error is reported, never fatal."""
    try:
        from gradlab.render.run_figures import plot_run

        drawn = plot_run(run_dir)
    except KeyboardInterrupt:
        raise _fail("interrupted while drawing the plots; the record is complete "
                    f"(gradlab report {run_dir} draws them)", 130) from None
    except Exception as e:  # the record is already complete: a figure is not worth a crash
        err_console.print(f"plots failed: {type(e).__name__}: {e}", style="yellow", markup=False)
        return
    if not quiet:
        names = ", ".join(p.name for p in drawn)
        out_console.print(f"plots: {run_dir / 'plots'} ({names})", style="dim", highlight=False,
                          soft_wrap=True)


def _draw_comparison(record_dir: Path, draw: bool) -> None:
    """A compare record's figures (when `draw`) and report.md; errors are reported, not fatal."""
    try:
        from gradlab.render.compare_figures import plot_compare_record

        plot_compare_record(record_dir, draw)
    except KeyboardInterrupt:
        raise _fail(f"interrupted while drawing the comparison figures (gradlab report "
                    f"{record_dir} draws them)", 130) from None
    except Exception as e:
        err_console.print(f"comparison figures failed: {type(e).__name__}: {e}", style="yellow",
                          markup=False)


def main() -> None:
    app()
