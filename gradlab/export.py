"""TensorBoard export: `export_tensorboard(path, out) → Exported`, for `gradlab export`.

One TensorBoard run per run (OUT/NAME), per seed (OUT/NAME/seed-N), per variant of a compare or
sweep record, read through `gradlab.record` only and written by torch's SummaryWriter (the
`tensorboard` extra). Non-finite values are left out, magnitudes beyond float32 clamped; both counted.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from gradlab.record.comparison import is_comparison_dir, read_comparison
from gradlab.record.group import is_group_dir, member_dirs, read_group, seed_stem
from gradlab.record.reader import (
    find_runs,
    is_run_dir,
    is_training_row,
    iter_csv,
    read_config,
    read_summary,
    run_started,
)
from gradlab.record.sweep import is_sweep_dir, read_sweep
from gradlab.record.validate import CorruptRecord

INSTALL = "pip install 'gradlab[tensorboard]'"
METRICS = ("loss", "test_loss", "test_accuracy", "lr", "grad_norm", "grad_norm_clipped")
NOT_STATISTICS = ("step", "phase", "layer", "name", "t")
# float32's range: a larger magnitude would be stored as Inf, a smaller nonzero one as 0
F32_MAX = 3.4028234663852886e38
F32_TINY = 1.401298464324817e-45  # the smallest subnormal
# summary.json fields shown on TensorBoard's HPARAMS tab (and written as scalars there)
HPARAM_METRICS = ("final_loss", "loss_ratio", "grad_ratio_init", "grad_ratio_final")
LAYOUT = {"gradlab": {f"{stat} by layer": ["Multiline", [rf"^layers/.*/{stat}$"]]
                      for stat in ("grad_norm", "update_ratio", "act_std")}}
SAFE = re.compile(r"[^A-Za-z0-9_.=+-]")


class TensorBoardMissing(RuntimeError):
    """The `tensorboard` extra is not installed."""


class ExportError(ValueError):
    """Bad input: not a record, a target that cannot be written or already holds events."""


@dataclass
class Tally:
    """What was written and what was left out, for one TensorBoard run or the whole export."""

    scalars: int = 0
    histograms: int = 0
    nonfinite: Counter[str] = field(default_factory=Counter)  # scalars left out, by statistic
    first_nonfinite: int | None = None  # the first step with a non-finite scalar
    clamped: int = 0  # scalars clamped into float32's range
    no_log: int = 0  # histogram entries left out: zero, negative or non-finite (no log10)

    def add(self, other: Tally) -> None:
        self.scalars += other.scalars
        self.histograms += other.histograms
        self.nonfinite.update(other.nonfinite)
        steps = [s for s in (self.first_nonfinite, other.first_nonfinite) if s is not None]
        self.first_nonfinite = min(steps) if steps else None
        self.clamped += other.clamped
        self.no_log += other.no_log

    def left_out(self) -> str:
        """One line on what was left out or clamped; "" when nothing was."""
        parts = []
        if self.nonfinite:
            counts = ", ".join(f"{k} {n}" for k, n in sorted(self.nonfinite.items()))
            parts.append(f"{sum(self.nonfinite.values())} non-finite (NaN/Inf) scalars left out "
                         f"({counts}; first at step {self.first_nonfinite})")
        if self.no_log:
            parts.append(f"{self.no_log} histogram entries left out (zero or non-finite: no log10)")
        if self.clamped:
            parts.append(f"{self.clamped} scalars clamped into float32's range "
                         f"(±{F32_MAX:.3g}, smallest {F32_TINY:.3g})")
        return "; ".join(parts)


@dataclass
class Exported:
    """`runs`: (TensorBoard run name, record directory, event directory) for each run written;
    `notes`: what was resolved or left out on the way (a variant without a record, ...)."""

    out: Path
    runs: list[tuple[str, Path, Path]] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    notes: list[str] = field(default_factory=list)


def summary_writer() -> Any:
    """torch's SummaryWriter class; TensorBoardMissing (with the install line) without the extra."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard fails obscurely without it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TensorBoardMissing(f"TensorBoard export needs the tensorboard package: {INSTALL} "
                                 f"({e})") from None
    return SummaryWriter


def export_tensorboard(path: Path, out: Path, overwrite: bool = False) -> Exported:
    """Write the record at `path` (a run, a group, a compare or sweep record, or runs/NAME for
    its latest run) as TensorBoard event files under `out`. ExportError for bad input,
    TensorBoardMissing without the extra, CorruptRecord for a single run that is corrupt."""
    writer_class = summary_writer()
    exported = Exported(Path(out))
    runs = targets(Path(path), exported.notes)
    if not runs:
        raise ExportError(f"{path}: no run records to export" +
                          (f" ({'; '.join(exported.notes)})" if exported.notes else ""))
    places = _places(runs, Path(out), overwrite)
    for i, ((name, run_dir), event_dir) in enumerate(zip(runs, places)):
        tally = Tally()
        try:
            write_run(writer_class, run_dir, event_dir, tally, layout=i == 0)
        except CorruptRecord as e:
            if len(runs) == 1:
                raise
            exported.notes.append(f"{name}: {e}; its export stops there")
        exported.runs.append((name, run_dir, event_dir))
        exported.tally.add(tally)
    return exported


# ---------------------------------------------------------------- which runs


def targets(path: Path, notes: list[str]) -> list[tuple[str, Path]]:
    """(TensorBoard run name, run directory) of every run the record at `path` holds; what
    is resolved or left out on the way is added to `notes`."""
    if is_sweep_dir(path):
        sweep = read_sweep(path)
        return _variants(path, [(str(p["name"]), str(p.get("run") or "")) for p in sweep["points"]],
                         notes)
    if is_comparison_dir(path):
        return _variants(path, [(str(r.get("variant")), str(r.get("run_dir") or ""))
                                for r in read_comparison(path)], notes)
    if is_group_dir(path) or is_run_dir(path):
        found: list[tuple[str, Path]] = []
        _add(found, _record_name(path), path, notes)
        return found
    entries = [p for p in find_runs(path) if p.parent == path] if path.is_dir() else []
    if not entries:
        raise ExportError(f"{path}: not a gradlab record (a run, a group, a compare or sweep "
                          "record, or runs/NAME); `gradlab runs` lists the runs")
    latest = max(entries, key=run_started)  # a name directory (runs/NAME): its latest
    notes.append(f"the latest of {len(entries)} under {path}: {latest}")
    return targets(latest, notes)


def _variants(path: Path, rows: list[tuple[str, str]], notes: list[str]) -> list[tuple[str, Path]]:
    """A compare or sweep record's variants, through its variants/NAME links (a moved record
    still finds them), else the run directory it names."""
    found: list[tuple[str, Path]] = []
    for name, where in rows:
        link = path / "variants" / name
        _add(found, name, link if link.is_dir() else path / where, notes)
    return found


def _add(found: list[tuple[str, Path]], name: str, where: Path, notes: list[str]) -> None:
    if is_group_dir(where):
        try:
            members = member_dirs(where, read_group(where))
        except CorruptRecord as e:
            notes.append(f"{name}: left out: {e}")
            return
        for seed, run_dir in sorted(members.items()):
            if is_run_dir(run_dir):
                found.append((f"{name}/{seed_stem(seed)}", run_dir))
            else:
                notes.append(f"{name}/{seed_stem(seed)}: left out: no run record at {run_dir}")
    elif is_run_dir(where):
        found.append((name, where))
    else:
        notes.append(f"{name}: left out: no run record at {where}")


def _record_name(path: Path) -> str:
    try:
        named = (read_group(path) if is_group_dir(path) else read_summary(path) or {}).get("name")
    except CorruptRecord:
        named = None
    return str(named or (path.parent.name if path.parent.name else path.name))


def _places(runs: list[tuple[str, Path]], out: Path, overwrite: bool) -> list[Path]:
    """Each run's event directory under `out` (names made path-safe and distinct); checked
    writable and free of earlier event files (removed with `overwrite`) before anything is
    written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".gradlab-export-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ExportError(f"--tensorboard {out}: cannot write there: {e.strerror or e}") from None
    places: list[Path] = []
    for name, _ in runs:
        parts = [SAFE.sub("_", p) for p in name.split("/") if p not in ("", ".", "..")] or ["run"]
        place, n = out.joinpath(*parts), 1
        while place in places:
            n += 1
            place = out.joinpath(*parts[:-1], f"{parts[-1]}-{n}")
        places.append(place)
    taken = [f for p in places for f in (sorted(p.glob("events.out.tfevents.*")) if p.is_dir() else [])]
    if taken and not overwrite:
        raise ExportError(f"--tensorboard {out}: {taken[0].parent} already holds event files "
                          f"({len(taken)} in all); use --overwrite to replace them, or another DIR")
    try:
        for f in taken:
            f.unlink()
        for p in places:
            p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--tensorboard {out}: cannot write there: {e.strerror or e}") from None
    return places


# ---------------------------------------------------------------- one run


def write_run(writer_class: Any, run_dir: Path, event_dir: Path, tally: Tally,
              layout: bool = False) -> None:
    """One run's record as one TensorBoard run: metrics, per-layer and through-time scalars,
    log10 histograms over layers and over time, the config and summary as text, hparams."""
    summary = read_summary(run_dir) or {}
    config = read_config(run_dir)
    writer = writer_class(log_dir=str(event_dir), max_queue=1000, flush_secs=30)
    try:
        out = _Out(writer, tally, _clock(run_dir, summary))
        if layout:
            writer.add_custom_scalars(LAYOUT)
        for row in iter_csv(run_dir / "metrics.csv"):
            prefix = "" if is_training_row(row) else f"{row.get('phase')}/"
            for column in METRICS:
                out.scalar(prefix + column, column, row.get(column), row["step"])
        for step, rows in _by_step(iter_csv(run_dir / "layers.csv")):
            for row in rows:
                name = str(row.get("name") or f"layer{row.get('layer')}")
                for stat, value in _statistics(row):
                    out.scalar(f"layers/{name}/{stat}", stat, value, step)
            out.histogram("by_layer/log10_grad_norm", [r.get("grad_norm") for r in rows], step)
            out.histogram("by_layer/log10_update_ratio", [r.get("update_ratio") for r in rows], step)
        for step, rows in _by_step(iter_csv(run_dir / "time_grads.csv")):
            for row in rows:
                out.scalar(f"time_grads/t={int(row['t']):03d}", "time_grads", row.get("grad_norm"), step)
            out.histogram("by_time/log10_grad_norm", [r.get("grad_norm") for r in rows], step)
        _hparams(writer, out, config, summary)
        writer.add_text("config", _code(yaml.safe_dump(config, sort_keys=False)), 0)
        writer.add_text("summary", _summary_text(run_dir, summary), 0)
        if tally.left_out():
            writer.add_text("export", f"Left out by gradlab export: {tally.left_out()}", 0)
    finally:
        writer.close()


class _Out:
    """Scalars and histograms with TensorBoard's limits applied and counted in a Tally."""

    def __init__(self, writer: Any, tally: Tally, clock: tuple[float, float | None]) -> None:
        self.writer, self.tally, (self.t0, self.rate) = writer, tally, clock

    def when(self, step: int) -> float:
        return self.t0 + step / self.rate if self.rate else self.t0

    def scalar(self, tag: str, stat: str, value: Any, step: int) -> None:
        if not _number(value):
            return  # not measured (an empty cell): nothing to write, nothing left out
        v = float(value)
        if not math.isfinite(v):
            self.tally.nonfinite[stat] += 1
            if self.tally.first_nonfinite is None or step < self.tally.first_nonfinite:
                self.tally.first_nonfinite = step
            return
        if abs(v) > F32_MAX or 0 < abs(v) < F32_TINY:
            v = math.copysign(F32_MAX if abs(v) > F32_MAX else F32_TINY, v)
            self.tally.clamped += 1
        self.writer.add_scalar(tag, v, step, walltime=self.when(step))
        self.tally.scalars += 1

    def histogram(self, tag: str, values: list[Any], step: int) -> None:
        import numpy as np

        measured = [float(v) for v in values if _number(v)]
        logs = [math.log10(v) for v in measured if math.isfinite(v) and v > 0]
        self.tally.no_log += len(measured) - len(logs)
        if logs:  # an empty histogram is an error in torch's writer
            self.writer.add_histogram(tag, np.array(logs), step, bins="auto", walltime=self.when(step))
            self.tally.histograms += 1


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _statistics(row: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A layers.csv row's statistics (every column but the keys), in the file's order."""
    return ((k, v) for k, v in row.items() if k not in NOT_STATISTICS)


def _by_step(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Consecutive rows of one logged step (a record writes each step's rows together);
    pretraining rows are left out of layers.csv and time_grads.csv by the writer already."""
    step: int | None = None
    batch: list[dict[str, Any]] = []
    for row in rows:
        if row["step"] != step and batch:
            yield step, batch  # type: ignore[misc]
            batch = []
        step = row["step"]
        batch.append(row)
    if batch:
        yield step, batch  # type: ignore[misc]


def _clock(run_dir: Path, summary: dict[str, Any]) -> tuple[float, float | None]:
    """When the run started (its directory's stamp) and its steps per second, so that
    TensorBoard's relative time axis is the run's and not the export's."""
    start = run_started(run_dir)[0].timestamp()
    rate = summary.get("steps_per_second")
    return start, float(rate) if _number(rate) and math.isfinite(rate) and rate > 0 else None


def _hparams(writer: Any, out: _Out, config: dict[str, Any], summary: dict[str, Any]) -> None:
    """The config's values and the summary's headline numbers on the HPARAMS tab, so that the
    variants of a compare or sweep record sit in one table."""
    from torch.utils.tensorboard.summary import hparams

    values = dict(_flat(config))
    done = summary.get("steps_done")
    steps = int(done) if _number(done) else 0
    metrics: dict[str, float] = {}
    for key in HPARAM_METRICS:
        before = out.tally.scalars
        out.scalar(f"hparams/{key}", key, summary.get(key), steps)
        if out.tally.scalars > before:
            metrics[f"hparams/{key}"] = float(summary[key])
    if not values:
        return
    for proto in hparams(values, metrics):
        writer.file_writer.add_summary(proto)


def _flat(data: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """A config as dotted keys and values TensorBoard's hparams take (lists and None as text)."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _flat(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, bool | str) or (_number(data) and math.isfinite(data)):
        yield key, data
    else:
        yield key, json.dumps(data, default=str)


def _code(text: str) -> str:
    """Text shown as-is: TensorBoard renders text summaries as Markdown."""
    return "\n".join("    " + line for line in text.splitlines())


def _summary_text(run_dir: Path, summary: dict[str, Any]) -> str:
    if not summary:
        return f"`{run_dir}`: no summary.json (the run was killed before it wrote one)"
    rows = [f"| {k} | {json.dumps(v, default=str)} |" for k, v in summary.items()
            if not isinstance(v, (dict, list))]
    kinds = [str(v.get("kind")) for v in summary.get("verdicts") or [] if isinstance(v, dict)]
    rows.append(f"| verdicts | {', '.join(kinds) or 'none'} |")
    return f"Record: `{run_dir}`\n\n| field | value |\n| --- | --- |\n" + "\n".join(rows)
