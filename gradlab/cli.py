"""The `gradlab` command line: parse, call one library function, print.

Heavy modules (torch, the trainer) are imported inside the commands that need them, so
`gradlab validate` and `gradlab --help` stay instant.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from gradlab.analyse.expect import over_rule
from gradlab.config import ConfigError, config_from_dict, load_config
from gradlab.config.load import origins
from gradlab.config.schema import MAX_SEEDS

if TYPE_CHECKING:  # the events are only annotations here: the CLI starts without torch
    from gradlab.compare import Variant
    from gradlab.train.events import Evaluated, Logged, StepEnd

app = typer.Typer(
    help="gradlab: a laboratory for vanishing and exploding gradients in deep networks.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out_console = Console(emoji=False)  # user text (a value, a name) is printed as typed
err_console = Console(stderr=True, emoji=False)


def _plain_help() -> None:
    """--help in the usual notation: no type shown for an on/off flag (typer prints `<bool>`),
    and arguments as CONFIG / [ROOT] rather than typer's `{config}`."""
    core = typer.core
    option_type = core.TyperOption.display_type_rich

    def option_display(self: Any, ctx: Any) -> str | None:
        return None if self.is_flag and self.metavar is None else option_type(self, ctx)

    def argument_usage(self: Any) -> str:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    if hasattr(core.TyperOption, "display_type_rich"):
        core.TyperOption.display_type_rich = option_display  # type: ignore[method-assign]
    if hasattr(core.TyperArgument, "_usage_display_name"):
        core.TyperArgument._usage_display_name = argument_usage  # type: ignore[method-assign]


_plain_help()


def _version(value: bool) -> None:
    if value:
        from gradlab import __version__

        print(f"gradlab {__version__}")
        raise typer.Exit()


@app.callback()
def _consoles(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print gradlab's version and exit.")
    ] = False,
) -> None:
    """Fresh consoles for each invocation, sized by the terminal (or COLUMNS) it runs in."""
    global out_console, err_console
    # Piped output (CI, files) gets 100 columns rather than rich's 80, so tables stay whole.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 100
    out_console, err_console = Console(width=width, emoji=False), Console(stderr=True, emoji=False)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="Override a config key: --set model.depth=20 (repeatable; value is YAML).")]
OutOpt = Annotated[Path, typer.Option("--out", metavar="DIR",
                                       help="Directory that run records go under.")]
NoPlotsOpt = Annotated[bool, typer.Option("--no-plots", help="Draw no figures (RUN/plots/*.png).")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", metavar="local|slurm",
    help="Where the variants run: local (this machine's worker processes) or slurm (a Slurm "
         "job array through submitit; --out must be on a filesystem the nodes share; without "
         "sbatch the array runs as local processes). Needs submitit: the cluster extra, or "
         "pip install submitit.")]
SlurmOpt = Annotated[list[str] | None, typer.Option(
    "--slurm", metavar="KEY=VALUE",
    help="A Slurm option for --executor slurm (repeatable): partition=NAME, time=MINUTES or "
         "H:MM:SS (default 60), cpus=N (per task, default 1), mem=4G, array_parallelism=N "
         "(default --jobs), account=, qos=, gpus=N, constraint=, setup='module load ...'.")]
SeedsOpt = Annotated[str | None, typer.Option(
    "--seeds", metavar="LIST|COUNT",
    help="Several seeds: a list (0,1,2) or a count (3: seeds 0, 1, 2). One run per seed, in "
         "parallel, and a group record over them (overrides the config's seeds).")]


# Exit codes (README, "Errors, failures and interruptions"): 0 done; 1 a run failed or a claim
# did not hold; 2 bad input (a config, an option, an --out that cannot hold records, a corrupt
# record read back); 3 a record could not be written (disk full, I/O error, run directory
# deleted); 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP).
WRITE_FAILED = 3


def _fail(message: str, code: int = 2) -> typer.Exit:
    _say(err_console, message, style="red")
    return typer.Exit(code)


def _fitted(text: str, width: int) -> str:
    """`text` wrapped to `width` columns line by line at spaces, each continuation indented
    two more spaces than its line; a word (a path) wider than that stays whole on its own line."""
    import textwrap

    from rich.cells import cell_len

    lines = []
    for line in text.split("\n"):
        if cell_len(line) <= width:
            lines.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        lines += textwrap.wrap(line, max(width, len(indent) + 1), subsequent_indent=indent,
                               break_long_words=False, break_on_hyphens=False) or [line]
    return "\n".join(lines)


def _say(console: Console, *parts: str, style: str | None = None,
         fit: bool | None = None) -> None:
    """Print a message: its `parts` on one line, or, where that is wider than the console,
    each part on a line of its own (the later ones indented), wrapped at spaces. Fitted on a
    terminal (or with `fit`); piped, a message stays one line per problem, for grep."""
    from rich.cells import cell_len

    text = " ".join(parts)
    if console.is_terminal if fit is None else fit:
        if len(parts) > 1 and max(map(cell_len, text.split("\n"))) > console.width:
            text = parts[0] + "".join(f"\n  {p}" for p in parts[1:])
        text = _fitted(text, console.width)
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def _overrides(sets: list[str] | None, steps: int | None, seed: int | None,
               device: str | None, seeds: str | None = None) -> list[str]:
    """The options as the `key=value` overrides a config is loaded with (and a run records).
    `--steps N` is `train.steps=N` alone: it replaces the file's `train.epochs`
    (`config.load.apply_overrides`)."""
    items = list(sets or [])
    if steps is not None:
        items.append(f"train.steps={steps}")
    if seed is not None and seeds is not None:
        raise _fail("--seed and --seeds: give one (--seed N runs one seed, --seeds a group)")
    if seed is not None:
        items += [f"seed={seed}", "seeds=null"]
    if seeds is not None:
        items.append(f"seeds={parse_seeds(seeds)}")
    if device is not None:
        items.append(f"device={device}")
    return items


def _labels(steps: int | None, seed: int | None, device: str | None,
            seeds: str | None = None) -> dict[str, str]:
    """How the user typed the overrides `_overrides` makes of options, so that a problem
    names `--device gpu`, not the config file (`--set` lines name themselves)."""
    labels = {}
    if steps is not None:
        labels[f"train.steps={steps}"] = f"--steps {steps}"
    if seed is not None:
        labels[f"seed={seed}"] = labels["seeds=null"] = f"--seed {seed}"
    if seeds is not None:
        labels[f"seeds={parse_seeds(seeds)}"] = f"--seeds {seeds}"
    if device is not None:
        labels[f"device={device}"] = f"--device {device}"
    return labels


def _cluster(executor: str, slurm: list[str] | None, jobs: int | None) -> Any:
    """`--executor`/`--slurm` as a `gradlab.cluster.Cluster` (None: the local pool); exit 2
    for bad input, before anything runs."""
    if executor == "local" and not slurm:
        return None
    from gradlab.cluster import make_cluster

    try:
        cluster = make_cluster(executor, slurm, jobs)
    except ConfigError as e:
        raise _fail(str(e)) from None
    for note in cluster.notes if cluster is not None else []:
        err_console.print(note, style="yellow", markup=False, highlight=False, soft_wrap=True)
    return cluster


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` (a list) or `--seeds 3` (a count: 0, 1, 2); bad input exits 2."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise _fail(f"--seeds {text}: expected a list of seeds (0,1,2) or a count (3)")
    values = [int(p) for p in parts]
    if len(values) == 1:
        if not 1 <= values[0] <= MAX_SEEDS:
            raise _fail(f"--seeds {text}: a count is 1 to {MAX_SEEDS}")
        return list(range(values[0]))
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise _fail(f"--seeds {text}: seed {', '.join(map(str, twice))} given twice "
                    "(each seed is one run)")
    if len(values) > MAX_SEEDS:
        raise _fail(f"--seeds {text}: at most {MAX_SEEDS} distinct seeds")
    return values


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
    seeds: SeedsOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print summary.json to stdout instead of the report.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    all_layers: Annotated[bool, typer.Option(
        "--all-layers", help="Show every layer in the table.")] = False,
    no_plots: NoPlotsOpt = False,
) -> None:
    """Train one variant, probe every layer, write a run record and report it."""
    overrides = _overrides(set_, steps, seed, device, seeds)
    labels = _labels(steps, seed, device, seeds)
    try:
        cfg = load_config(config, overrides, labels)
    except ConfigError as e:
        raise _fail(str(e)) from None
    if cfg.seeds:
        _run_group(config, out, overrides, as_json, quiet, no_plots)
        return
    from gradlab.record import stopping
    from gradlab.record.guard import RecordWriteError
    from gradlab.record.reader import read_record
    from gradlab.render.report import run_report

    show_bar = not quiet and not as_json and err_console.is_terminal
    try:
        from gradlab.runner import run_config  # torch: a stop signal may come while it loads

        if show_bar:
            with Progress(cfg.name) as bar:
                outcome = run_config(cfg, out, (bar,), overrides=overrides)
        else:
            outcome = run_config(cfg, out, overrides=overrides)
    except ConfigError as e:  # found once the data is read, e.g. a file dataset's columns
        raise _fail(str(ConfigError(str(config), e.problems, origins(overrides, labels)))) \
            from None
    except RecordWriteError as e:  # disk full, I/O error, run directory deleted: mid-run too
        raise _fail(f"{config}: {e}", WRITE_FAILED) from None
    except OSError as e:  # the run directory cannot be created under --out
        raise _fail(f"{config}: --out {out}: cannot create a run record there: "
                    f"{e.strerror or e}") from None
    except KeyboardInterrupt as e:
        raise _fail(f"{_stopped_by(e)} before training started; no record was completed",
                    stopping.exit_code()) from None
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
        raise typer.Exit(stopping.exit_code())
    if outcome.summary["status"] == "failed":
        _say(err_console, f"run failed: {outcome.summary['error']}", f"(record: {outcome.path})",
             style="red")
        raise typer.Exit(1)


def _run_group(config: Path, out: Path, overrides: list[str], as_json: bool, quiet: bool,
               no_plots: bool) -> None:
    """`run` over several seeds: one run per seed through compare's worker pool, then the
    group's report (or group.json with --json)."""
    from gradlab import compare as comparing
    from gradlab.record import stopping
    from gradlab.render.group_report import group_report

    unusable = _unwritable(out)
    if unusable:
        raise _fail(f"--out {out}: cannot create records there: {unusable}")

    def done(v: comparing.Variant) -> None:
        if not quiet and not as_json:
            err_console.print(f"{_mark(v.status)} {v.label}: {v.status}{_took(v)}",
                              highlight=False, markup=False)

    [group] = comparing.compare([config], out, overrides=overrides, plots=not no_plots,
                                on_done=done, pairs=False)
    if group.config is None:
        raise _fail(str(group.error))
    if as_json:
        sys.stdout.write(json.dumps(group.group or {}, indent=2) + "\n")
    elif group.group is not None and group.run_dir is not None:
        out_console.print(group_report(group.run_dir, group.group))
        _say(out_console, f"group record: {group.run_dir}", style="dim")
    _write_failures([group, *group.members])
    if group.interrupted:
        raise typer.Exit(stopping.exit_code())
    if any(m.write_failed for m in group.members) or group.write_failed:
        raise typer.Exit(WRITE_FAILED)
    if any(m.status in ("failed", "incomplete", "not run") for m in group.members):
        raise typer.Exit(1)


def _mark(status: str) -> str:
    return {"completed": "✓", "diverged": "✗"}.get(status, "!")


def _took(v: Any) -> str:
    """` in 1.3 s`, and ` (+ 10.2 s pretraining)` where layer-wise pretraining came first: a
    run's `seconds` are its training steps' only."""
    summary = (v.record.summary or {}) if v.record else {}
    secs, pretrain = summary.get("seconds"), summary.get("pretrain")
    took = f" in {secs:.1f} s" if isinstance(secs, (int, float)) else ""
    before = pretrain.get("seconds") if isinstance(pretrain, dict) else None
    if took and isinstance(before, (int, float)):
        took += f" (+ {before:.1f} s pretraining)"
    return took + (" (reused)" if v.reused else "")


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
    seeds: SeedsOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda for every variant.")] = None,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Draw no figures.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    executor: ExecutorOpt = "local",
    slurm: SlurmOpt = None,
) -> None:
    """Run many variants in parallel and set them side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gradlab.config.load import config_paths
    from gradlab.record import stopping
    from gradlab.record.files import uninterrupted
    from gradlab.record.guard import RecordWriteError

    config_files = config_paths(paths)
    missing = [p for p in paths if not p.exists()]
    if missing or not config_files:
        raise _fail(f"{missing[0] if missing else paths[0]}: no such config file or directory"
                    if missing else "no *.yaml configs found in " + ", ".join(map(str, paths)))
    unusable = _unwritable(out)
    if unusable:
        raise _fail(f"--out {out}: cannot create records there: {unusable}")
    cluster = _cluster(executor, slurm, jobs)
    try:
        from gradlab import compare as comparing  # a stop signal may come while it loads
        from gradlab.render.compare_table import comparison_table, pairs_table
    except KeyboardInterrupt as stop:
        raise _fail(f"{_stopped_by(stop)} before any variant ran; nothing was written",
                    stopping.exit_code()) from None
    bar = Progress("compare", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True, disable=quiet)
    task = bar.add_task("compare", total=len(config_files))

    def done(v: comparing.Variant) -> None:
        if not quiet:
            err_console.print(f"{_mark(v.status)} {v.label}: {v.status}{_took(v)}",
                              highlight=False, markup=False)
        bar.advance(task)

    overrides = _overrides(set_, steps, seed, device, seeds)
    try:
        with bar:
            variants = comparing.compare(config_files, out, jobs, overrides, reuse,
                                         not no_plots, done,
                                         on_plan=lambda n: bar.update(task, total=n),
                                         cluster=cluster,
                                         labels=_labels(steps, seed, device, seeds))
    except KeyboardInterrupt as stop:  # while the configs were checked: nothing ran
        raise _fail(f"{_stopped_by(stop)} before any variant ran; nothing was written",
                    stopping.exit_code()) from None
    rows = comparing.comparison_rows(variants)
    stopped = any(v.interrupted for v in variants)
    if all(v.status == "invalid" for v in variants):  # nothing ran: no record of nothing
        for v in variants:
            _say(err_console, str(v.error), style="red")
        which = "the config is not" if len(variants) == 1 else f"none of the {len(variants)} " \
            "configs is"
        raise _fail(f"{which} valid: nothing ran, and no compare record was written")
    try:
        with uninterrupted():  # a stop signal now would leave half a compare record
            record_dir = comparing.write_record(rows, out)
    except RecordWriteError as failure:
        out_console.print(comparison_table(rows, show_claims=check))
        _write_failures(variants)
        raise _fail(str(failure), WRITE_FAILED) from None
    out_console.print(comparison_table(rows, show_claims=check))
    pairs = pairs_table(rows)
    if pairs is not None:
        out_console.print(pairs)
    out_console.print(f"compare record: {record_dir}", style="dim", highlight=False,
                      soft_wrap=True)
    if stopped and not no_plots:  # stopping should be quick: the figures can wait
        err_console.print(f"figures skipped (stopped): gradlab report {record_dir} draws them",
                          style="yellow", markup=False, highlight=False, soft_wrap=True)
    _draw_comparison(record_dir, draw=not no_plots and not stopped)
    invalid = [v for v in variants if v.status == "invalid"]
    if not (out_console.is_terminal and err_console.is_terminal):  # else the table showed them
        for v in invalid:  # the table's copy is wrapped into it; stderr's is one line a problem
            _say(err_console, str(v.error), style="red")
    broken = [(v, e) for v in variants for e in v.expectations if not e.ok] if check else []
    groups = sum(v.is_group for v in variants)
    if check:
        if broken:
            out_console.print(f"{len(broken)} expectation(s) failed:", style="bold red")
            for v, e in broken:
                out_console.print(f"  {v.name}: {e.describe()}", markup=False, highlight=False)
        else:
            held = sum(len(v.expectations) for v in variants)
            paired = sum(e.partner is not None for v in variants for e in v.expectations)
            over = f" ({paired} of them paired; over {_seed_rules(variants)})" \
                if groups else (f" ({paired} of them paired)" if paired else "")
            out_console.print(f"all {held} expectations held{over}", style="green")
            missed = [(v, e) for v in variants for e in v.expectations if e.missed_seeds]
            if missed:
                out_console.print("held for their share of the seeds, not for all:")
            for v, e in missed:
                out_console.print(f"  {v.name}: {e.describe()}", markup=False, highlight=False)
    _write_failures(variants)
    if stopped:
        err_console.print("interrupted: the comparison covers the variants that finished",
                          style="yellow")
        raise typer.Exit(stopping.exit_code())
    if invalid:
        raise typer.Exit(2)
    if any(v.write_failed for v in variants):
        raise typer.Exit(WRITE_FAILED)
    if broken or any(v.status in ("failed", "incomplete") for v in variants):  # or its worker died
        raise typer.Exit(1)


def _seed_rules(variants: list[Variant]) -> str:
    """How the groups' claims were checked over their seeds: `every seed of 38 groups`, or
    `every seed of 36 groups, at least 90% of the seeds of 2 groups` as their `over:` says."""
    rules = Counter(over_rule(v.config.expect) for v in variants
                    if v.is_group and v.config is not None)
    return ", ".join(f"{rule} of {n} group{'s' if n > 1 else ''}" for rule, n in rules.items())


@app.command()
def fix(
    config: Annotated[Path, typer.Argument(help="The YAML file describing the variant.",
                                           dir_okay=False)],
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Parallel processes (default: the number of cores).")] = None,
    out: OutOpt = Path("runs"),
    set_: SetOpt = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    seeds: SeedsOpt = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    executor: ExecutorOpt = "local",
    slurm: SlurmOpt = None,
) -> None:
    """Run a config and every remedy its verdicts give; rank the remedies by what the net learns."""
    from gradlab import compare as comparing
    from gradlab.fix import fix as run_fixes
    from gradlab.render.fix_table import best_command, fix_table

    overrides = _overrides(set_, steps, seed, device, seeds)
    try:
        load_config(config, overrides, _labels(steps, seed, device, seeds))
    except ConfigError as e:
        raise _fail(str(e)) from None

    def done(v: comparing.Variant) -> None:
        if not quiet:
            err_console.print(f"{_mark(v.status)} {v.label}: {v.status}{_took(v)}",
                              highlight=False, markup=False)

    cluster = _cluster(executor, slurm, jobs)
    outcome = run_fixes(config, out, jobs, overrides, on_done=done, cluster=cluster)
    out_console.print(fix_table(outcome.rows, outcome.original, str(config)))
    best = best_command(outcome.rows, str(config), overrides)
    if best:
        out_console.print(f"best: {best}", highlight=False, markup=False, soft_wrap=True)
    _say(out_console, f"fix record: {outcome.record}",
         *(["(patches/*.yaml: each remedy as a config)"] if outcome.rows else []),
         style="dim", fit=True)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(
        help="The base config (YAML), or a sweep spec: a config with a sweep: section "
             "(grid, seeds, plot, expect).", dir_okay=False)],
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", metavar="KEY=VALUES",
        help="A key to sweep and its values (repeatable; the cross product runs): a list "
             "(model.depth=10,20,40), a range start:stop:count with both ends "
             "(model.init.std=0.05:0.3:8), or a log range log:start:stop:count "
             "(train.lr=log:1e-3:1e-1:5). Replaces the spec's grid for that key.")] = None,
    seeds: SeedsOpt = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Parallel processes (default: the number of cores).")] = None,
    reuse: Annotated[bool, typer.Option(
        "--reuse", help="Skip a point whose identical resolved config already has a completed "
                        "run under --out.")] = False,
    out: OutOpt = Path("runs"),
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="FIELD",
        help="The summary field the heatmap shows, dotted (final_metrics.test_accuracy, "
             "grad_ratio_init, ...); default: the spec's plot:, else the test metric.")] = None,
    yes: Annotated[bool, typer.Option(
        "--yes", help="Run a grid larger than --max-variants.")] = False,
    max_variants: Annotated[int, typer.Option(
        "--max-variants", min=1, help="Refuse grids of more points than this without --yes.")]
        = 1000,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Draw no heatmap.")] = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Check the spec's sweep.expect claims; exit 1 if one fails.")] = False,
    set_: SetOpt = None,
    steps: Annotated[int | None, typer.Option(help="Training steps for every point.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda for every point.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
    executor: ExecutorOpt = "local",
    slurm: SlurmOpt = None,
) -> None:
    """Run the cross product of --grid overrides and draw a heatmap of a summary field over
    two swept keys (with the mean-field ξ line where they are depth and a weight variance)."""
    from gradlab.sweep import field_problem, plan_sweep, text_keys

    overrides = _overrides(set_, steps, None, device, seeds)
    try:
        plan = plan_sweep(config, grid or [], overrides, max_variants, yes)
    except ConfigError as e:
        if e.source == str(config) and not e.origins:  # the base config with the overrides
            e = ConfigError(e.source, e.problems,
                            origins(overrides, _labels(steps, None, device, seeds)))
        raise _fail(str(e)) from None
    if plot and (why := field_problem(plot, plan.keys, plot=True, text_keys=text_keys(plan.axes))):
        raise _fail(f"--plot: {why}")
    if check and not plan.claims:  # before anything trains: there would be nothing to check
        raise _fail(f"--check: {config} has no sweep.expect claims to check (a spec's sweep: "
                    "section lists them; see the README's Sweeps)")
    unusable = _unwritable(out)
    if unusable:
        raise _fail(f"--out {out}: cannot create records there: {unusable}")
    cluster = _cluster(executor, slurm, jobs)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from gradlab.record import stopping
    from gradlab.record.guard import RecordWriteError
    from gradlab.render.sweep_table import render_sweep_dir

    if not quiet:
        n = len(plan.points)
        err_console.print(f"sweep {plan.name}: {n} point{'s' if n != 1 else ''} × "
                          f"{len(plan.seeds or [0])} seed(s) = {plan.runs} runs", style="dim",
                          markup=False, highlight=False)
    try:
        from gradlab.sweep import run_sweep  # torch: a stop signal may come while it loads
    except KeyboardInterrupt as stop:
        raise _fail(f"{_stopped_by(stop)} before any variant ran; nothing was written",
                    stopping.exit_code()) from None
    bar = Progress("sweep", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err_console, transient=True, disable=quiet)
    task = bar.add_task("sweep", total=plan.runs)

    def done(v: Any) -> None:
        if not quiet:
            err_console.print(f"{_mark(v.status)} {v.label}: {v.status}{_took(v)}",
                              highlight=False, markup=False)
        bar.advance(task)

    try:
        with bar:
            outcome = run_sweep(plan, out, jobs, reuse, done,
                                on_plan=lambda n: bar.update(task, total=n), cluster=cluster)
    except RecordWriteError as e:
        raise _fail(str(e), WRITE_FAILED) from None
    except KeyboardInterrupt as stop:
        raise _fail(f"{_stopped_by(stop)} before any variant ran", stopping.exit_code()) \
            from None
    field = plot or plan.plot
    out_console.print(render_sweep_dir(outcome.record, field))
    out_console.print(f"sweep record: {outcome.record}", style="dim", highlight=False,
                      soft_wrap=True)
    if outcome.stopped:
        err_console.print(f"heatmap skipped (stopped): gradlab report {outcome.record} draws it",
                          style="yellow", markup=False, highlight=False, soft_wrap=True)
    elif not no_plots:
        _draw_sweep(outcome.record, field)
    invalid = [v for v in outcome.variants if v.status == "invalid"]
    for v in invalid:
        err_console.print(v.error, style="red", markup=False, highlight=False, soft_wrap=True)
    _write_failures(outcome.variants)
    broken = [c for c in outcome.claims if not c.ok] if check else []
    if check:
        held = len(outcome.claims) - len(broken)
        style = "bold red" if broken else "green"
        out_console.print(f"{held} of {len(outcome.claims)} sweep claims held", style=style)
    if outcome.stopped:
        raise typer.Exit(stopping.exit_code())
    if invalid:
        raise typer.Exit(2)
    if any(v.write_failed for v in outcome.variants):
        raise typer.Exit(WRITE_FAILED)
    failed = any(m.status in ("failed", "incomplete") for v in outcome.variants
                 for m in (v.members or [v]))
    if broken or failed:
        raise typer.Exit(1)


def _draw_sweep(sweep_dir: Path, field: str | None) -> None:
    """The sweep's heatmap; a field no run has is exit 2, a plotting error is reported, a file
    that cannot be written is exit 3."""
    from gradlab.record.guard import cause

    try:
        from gradlab.render.sweep_figures import plot_sweep

        drawn = plot_sweep(sweep_dir, field)
    except ValueError as e:
        raise _fail(f"--plot: {e}") from None
    except OSError as e:
        raise _fail(f"cannot write the heatmap in {sweep_dir}: {cause(e)}", WRITE_FAILED) \
            from None
    except Exception as e:  # the record is complete: a figure is not worth a crash
        err_console.print(f"heatmap failed: {type(e).__name__}: {e}", style="yellow",
                          markup=False)
        return
    out_console.print(f"heatmap: {drawn}", style="dim", highlight=False, soft_wrap=True)


@app.command()
def validate(
    configs: Annotated[list[Path], typer.Argument(help="YAML files (or directories of them) to check.")],
    set_: SetOpt = None,
) -> None:
    """Check configs without training: every problem, with its key path."""
    from gradlab.config.load import config_paths, read_yaml

    paths = config_paths(configs)
    if not paths:  # only directories, with no config in them: as compare refuses them
        raise _fail("no *.yaml configs found in " + ", ".join(map(str, configs)))
    problems = 0
    for path in paths:
        try:
            if "sweep" in read_yaml(path):  # a sweep spec: every point checked, as sweep does
                from gradlab.build.budget import preflight
                from gradlab.sweep import MAX_VARIANTS, plan_sweep

                plan = plan_sweep(path, [], set_ or [], yes=True)
                for point in plan.points:  # and each point's pre-flight, as its run has it
                    preflight(config_from_dict(point.raw, str(path)), f"{path} ({point.name})")
                many = len(plan.points) > MAX_VARIANTS
                out_console.print(f"{path}: ok (a sweep spec: {len(plan.points)} points × "
                                  f"{len(plan.seeds or [0])} seed(s) = {plan.runs} runs, "
                                  f"{len(plan.claims)} claim(s)"
                                  + ("; more points than gradlab sweep runs without --yes"
                                     if many else "") + ")",
                                  markup=False, highlight=False, soft_wrap=True)
                continue
            cfg = load_config(path, set_ or [])
            from gradlab.build.budget import preflight  # torch only for a run near the limit

            if cfg.data.kind == "file":  # read as `run` reads it (torch); others need no check
                from gradlab.build.data import check_data

                check_data(cfg.data, str(path))
            preflight(cfg, str(path))
            out_console.print(f"{path}: ok", markup=False, highlight=False, soft_wrap=True)
        except ConfigError as e:
            problems += 1
            if not e.origins:  # the data file's or the memory pre-flight's: a --set may be why
                e = ConfigError(e.source, e.problems, origins(set_ or []))
            _say(err_console, str(e), style="red")
    if problems:
        raise typer.Exit(2)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(
        help="A run directory (runs/NAME/STAMP), a group over several seeds (the same, with "
             "seed-N inside), a compare record (runs/compare-STAMP), a sweep record "
             "(runs/sweep-NAME-STAMP), or runs/NAME (its latest).",
        file_okay=False)],
    all_layers: Annotated[bool, typer.Option(
        "--all-layers", help="Show every layer in the table (for a group: every field).")] = False,
    no_plots: NoPlotsOpt = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", metavar="FIELD",
        help="For a sweep record: the summary field its heatmap (and table) shows.")] = None,
) -> None:
    """Re-print a run's report from its record and redraw its plots; no training."""
    from gradlab.record.comparison import is_comparison_dir
    from gradlab.record.reader import is_run_dir, read_record
    from gradlab.record.sweep import is_sweep_dir
    from gradlab.record.validate import CorruptRecord
    from gradlab.render.report import run_report

    if is_sweep_dir(run_dir):
        from gradlab.render.sweep_table import render_sweep_dir

        try:
            if plot is not None:  # checked before the table, which would show only –
                from gradlab.record.sweep import read_table
                from gradlab.render.sweep_figures import unplottable

                rows = read_table(run_dir)
                if rows and (why := unplottable(rows, plot)):
                    raise _fail(f"--plot: {why}")
            out_console.print(render_sweep_dir(run_dir, plot))
        except CorruptRecord as e:
            raise _fail(str(e)) from None
        out_console.print(str(run_dir), style="dim", highlight=False, soft_wrap=True)
        if not no_plots:
            _draw_sweep(run_dir, plot)
        return
    if plot is not None:
        raise _fail(f"--plot: {run_dir} is not a sweep record (runs/sweep-NAME-STAMP)")

    if is_comparison_dir(run_dir):
        from gradlab.render.compare_table import render_comparison_dir

        try:
            out_console.print(render_comparison_dir(run_dir))
        except CorruptRecord as e:
            raise _fail(str(e)) from None
        out_console.print(str(run_dir), style="dim", highlight=False, soft_wrap=True)
        _draw_comparison(run_dir, draw=not no_plots)
        return
    from gradlab.record.group import is_group_dir, member_dirs, read_group
    from gradlab.record.reader import find_runs, run_started

    if not is_run_dir(run_dir) and not is_group_dir(run_dir):
        entries = [p for p in find_runs(run_dir) if p.parent == run_dir] \
            if run_dir.is_dir() else []
        if not run_dir.exists():
            raise _fail(f"{run_dir}: no such directory; `gradlab runs` lists the runs")
        if not entries:
            raise _fail(f"{run_dir}: not a run directory (no summary.json or metrics.csv); "
                        f"`gradlab runs` lists the runs")
        run_dir = max(entries, key=run_started)  # a name directory (runs/NAME): its latest
        _say(err_console, f"the latest of {len(entries)} under {run_dir.parent}:", str(run_dir),
             style="dim", fit=True)
    if is_group_dir(run_dir):
        from gradlab.render.group_report import group_report

        try:
            group = read_group(run_dir)
        except CorruptRecord as e:
            raise _fail(str(e)) from None
        out_console.print(group_report(run_dir, group, every=all_layers))
        first = next(iter(member_dirs(run_dir, group).values()), None)
        if not no_plots and first is not None and is_run_dir(first):
            _draw_plots(first)  # the first seed's figures; each seed's: report GROUP/seed-N
        return
    try:
        record = read_record(run_dir)
    except CorruptRecord as e:
        raise _fail(str(e)) from None
    out_console.print(run_report(record, all_layers))
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


@app.command()
def predict(
    config: Annotated[Path, typer.Argument(help="The YAML file describing the variant.",
                                           dir_okay=False)],
    device: Annotated[str | None, typer.Option(
        help="auto, cpu or cuda (overrides the config's device).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the prediction as JSON to stdout instead of the panel.")] = False,
) -> None:
    """Predict gradient flow at init (mean-field theory) beside one measured backward pass,
    the input–output Jacobian and recurrent spectra; trains nothing, writes nothing."""
    overrides, labels = _overrides(set_, None, seed, device), _labels(None, seed, device)
    try:
        cfg = load_config(config, overrides, labels)
    except ConfigError as e:
        raise _fail(str(e)) from None
    from gradlab.predict import predict as predict_config
    from gradlab.render.prediction import prediction_panel

    try:
        result = predict_config(cfg)
    except ConfigError as e:  # found once the data is read, or the memory pre-flight
        raise _fail(str(ConfigError(str(config), e.problems, origins(overrides, labels)))) \
            from None
    except KeyboardInterrupt:
        raise _fail("interrupted; nothing was written", 130) from None
    except Exception as e:
        raise _fail(f"{config}: prediction failed: {type(e).__name__}: {e}", 1) from None
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        out_console.print(prediction_panel(result))


@app.command()
def export(
    path: Annotated[Path, typer.Argument(
        help="A run directory (runs/NAME/STAMP), a group over several seeds, a compare record "
             "(runs/compare-STAMP), a sweep record (runs/sweep-NAME-STAMP), or runs/NAME (its "
             "latest).", file_okay=False)],
    tensorboard: Annotated[Path | None, typer.Option(
        "--tensorboard", metavar="DIR", file_okay=False,
        help="Write TensorBoard event files under DIR: one TensorBoard run per run (DIR/NAME), "
             "per seed (DIR/NAME/seed-N) or per variant of a compare or sweep record; then "
             "`tensorboard --logdir DIR`. Needs the extra: pip install 'gradlab\\[tensorboard]'.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the event files an earlier export left in those run "
                            "folders (otherwise they are refused).")] = False,
) -> None:
    """Export a record as TensorBoard event files: scalars per layer, histograms, the config.

    For pandas there is nothing to export: a record's CSVs are tidy (one row per step, layer)."""
    if tensorboard is None:
        raise _fail("gradlab export: say where to: --tensorboard DIR")
    from gradlab.export import ExportError, TensorBoardMissing, export_tensorboard
    from gradlab.record.guard import cause
    from gradlab.record.validate import CorruptRecord

    try:
        exported = export_tensorboard(path, tensorboard, overwrite)
    except (ExportError, TensorBoardMissing, CorruptRecord) as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"cannot write the event files under {tensorboard}: {cause(e)}",
                    WRITE_FAILED) from None
    for note in exported.notes:
        err_console.print(note, style="yellow" if "left out" in note else "dim", markup=False,
                          highlight=False, soft_wrap=True)
    names = ", ".join(name for name, _, _ in exported.runs)
    tally = exported.tally
    out_console.print(f"exported {len(exported.runs)} TensorBoard run(s) to {tensorboard}: {names}",
                      markup=False, highlight=False, soft_wrap=True)
    out_console.print(f"{tally.scalars} scalars, {tally.histograms} histograms", markup=False,
                      highlight=False, soft_wrap=True)
    if tally.left_out():
        err_console.print(tally.left_out(), style="yellow", markup=False, highlight=False,
                          soft_wrap=True)
    out_console.print(f"open with: tensorboard --logdir {tensorboard}", style="dim",
                      markup=False, highlight=False, soft_wrap=True)


def _draw_plots(run_dir: Path, quiet: bool = False) -> None:
    """Draw a run's figures into RUN/plots/; a plotting error is reported, never fatal, but a
    figure that cannot be written (disk full) is a write failure, exit 3."""
    from gradlab.record import stopping
    from gradlab.record.guard import cause

    try:
        from gradlab.render.run_figures import plot_run

        drawn = plot_run(run_dir)
    except KeyboardInterrupt as e:
        raise _fail(f"{_stopped_by(e)} while drawing the plots; the record is complete "
                    f"(gradlab report {run_dir} draws them)", stopping.exit_code()) from None
    except OSError as e:
        raise _fail(f"cannot write the figures in {run_dir / 'plots'}: {cause(e)}; the record "
                    "is complete", WRITE_FAILED) from None
    except Exception as e:  # the record is already complete: a figure is not worth a crash
        err_console.print(f"plots failed: {type(e).__name__}: {e}", style="yellow", markup=False)
        return
    if not quiet:
        names = ", ".join(p.name for p in drawn)
        _say(out_console, f"plots: {run_dir / 'plots'}", f"({names})", style="dim")


def _draw_comparison(record_dir: Path, draw: bool) -> None:
    """A compare record's figures (when `draw`) and report.md; errors are reported, not fatal,
    but a file that cannot be written (disk full) is a write failure, exit 3."""
    from gradlab.record import stopping
    from gradlab.record.guard import cause

    try:
        from gradlab.render.compare_figures import plot_compare_record

        plot_compare_record(record_dir, draw)
    except KeyboardInterrupt as e:
        raise _fail(f"{_stopped_by(e)} while drawing the comparison figures (gradlab report "
                    f"{record_dir} draws them)", stopping.exit_code()) from None
    except OSError as e:
        raise _fail(f"cannot write the comparison figures in {record_dir}: {cause(e)}",
                    WRITE_FAILED) from None
    except Exception as e:
        err_console.print(f"comparison figures failed: {type(e).__name__}: {e}", style="yellow",
                          markup=False)


def _write_failures(variants: list[Any]) -> None:
    """One line per variant whose run record could not be written."""
    for v in variants:
        if v.write_failed:
            err_console.print(f"{v.name}: {v.error}", style="red", markup=False,
                              highlight=False, soft_wrap=True)


def _stopped_by(error: BaseException) -> str:
    signum = getattr(error, "signum", None)
    from gradlab.record.stopping import name

    return f"stopped by {name(signum)}" if signum else "interrupted"


def _unwritable(out: Path) -> str | None:
    """Why `out` cannot hold records (not a directory, read-only, ...), or None."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".gradlab-check-", dir=out))
    except OSError as e:
        return e.strerror or str(e)
    return None


def _one_line_summaries() -> None:
    """Each command's line in `gradlab --help`: its docstring's first paragraph, reflowed
    (typer's rich help keeps the paragraph's line breaks there, and breaks it mid-sentence)."""
    for command in app.registered_commands:
        doc = (command.callback.__doc__ or "") if command.callback else ""
        first = doc.strip().split("\n\n")[0]
        if command.short_help is None and "\n" in first:
            command.short_help = " ".join(first.split())


_one_line_summaries()


def main() -> None:
    """The console script: SIGTERM and SIGHUP stop gradlab as Ctrl-C does, and the exit code
    is 128 + the signal's number."""
    import signal

    from gradlab.record import stopping

    with stopping.stop_on_signals():
        try:
            app()
        except SystemExit as e:
            if e.code == 130 and stopping.received():  # typer's code for a KeyboardInterrupt
                raise SystemExit(stopping.exit_code()) from None
            raise
        except OSError:
            if stopping.received() != getattr(signal, "SIGHUP", None):
                raise
            os._exit(stopping.exit_code())  # the terminal is gone: nothing can be printed
