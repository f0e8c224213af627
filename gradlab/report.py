"""Terminal rendering of run records: the per-layer table, loss curve and verdicts, and the
listing of every run under a directory (`gradlab runs`).

Every function here takes records (from `record.read_record`) and *returns* a rich
renderable; only the CLI prints. Nothing here imports the trainer or torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradlab.record import Record, is_run_dir
from gradlab.record import _read_csv as read_csv

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "green"}
FAR_BELOW = 1e-3  # a gradient this far below the layer with the largest one is highlighted


def num(x: Any, digits: int = 3) -> str:
    """A compact number: 0, 0.123, 12.3, 1.2e-05; a dash for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, int) and abs(x) < 1e5:
        return str(x)  # a step count: 1000, not 1e+03
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def run_report(record: Record, all_layers: bool = False) -> RenderableType:
    """The whole report of one run: header, layer table, loss curve, verdicts."""
    parts: list[RenderableType] = [header(record)]
    if record.summary and record.summary.get("pretrain"):
        parts.append(pretrain_table(record.summary["pretrain"]))
    parts.append(layer_table(record, all_layers))
    if record.summary and record.summary.get("time_grads_init"):
        parts.append(time_table(record.summary))
    parts.append(loss_curve(record.metrics))
    parts.append(verdict_panel(record))
    return Group(*parts)


def header(record: Record) -> RenderableType:
    s = record.summary or {}
    status = record.status
    style = {"completed": "green", "diverged": "red", "failed": "red"}.get(status, "yellow")
    lines = Text()
    lines.append(f"{s.get('name', record.path.parent.name)}", style="bold")
    lines.append("  ")
    lines.append(status, style=style)
    done: int | None
    if status in ("incomplete", "running"):  # no final summary: what it logged so far
        done, initial, final = logged_progress(record)
    else:
        done, initial, final = s.get("steps_done"), s.get("initial_loss"), s.get("final_loss")
    steps = f"{done}/{s.get('steps_planned', '?')} steps"
    speed = s.get("steps_per_second")
    lines.append(f"  {steps} in {num(s.get('seconds'))} s ({num(speed)} steps/s) on "
                 f"{s.get('device', '?')}\n")
    metrics = s.get("final_metrics") or {}
    shown = ", ".join(f"{k} {num(v)}" for k, v in metrics.items())
    lines.append(f"loss {num(initial)} → {num(final)}"
                 + (f"   ({shown})" if shown else "") + "\n")
    lines.append(f"grad ratio first/last layer: {num(s.get('grad_ratio_init'))} at init, "
                 f"{num(s.get('grad_ratio_final'))} at the end\n")
    if s.get("flush_denormal"):
        lines.append("denormal floats flushed to zero (flush_denormal: false to keep them)\n",
                     style="dim")
    if s.get("error"):
        lines.append(f"error: {s['error']}\n", style="red")
    if record.summary is None or record.status == "incomplete":
        lines.append("this run stopped without finishing its record (killed?): "
                     "showing what it logged\n", style="yellow")
    lines.append(str(record.path), style="dim")
    return Panel(lines, title="gradlab run", title_align="left", expand=False)


def select_layers(n: int, all_layers: bool, most: int = 14) -> list[int]:
    """Indices to show: all of a shallow net; first, last and every k-th of a deep one."""
    if all_layers or n <= most:
        return list(range(n))
    k = math.ceil(n / (most - 6))
    keep = {0, 1, 2, n - 3, n - 2, n - 1} | set(range(0, n, k))
    return sorted(i for i in keep if 0 <= i < n)


def layer_table(record: Record, all_layers: bool = False) -> RenderableType:
    layers = (record.summary or {}).get("layers") or _layers_from_rows(record.layers)
    if not layers:
        return Text("no layer statistics were logged", style="yellow")
    act = (record.config.get("model") or {}).get("activation", "")
    unit_stat, unit_label = ("act_saturated", "saturated") if act in ("sigmoid", "tanh") \
        else ("act_dead", "dead")
    table = Table(title="per-layer statistics (gradient norm at init and at the end)",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for col in ("#", "layer", "shape", "grad\ninit", "grad\nend", "grad\nRMS", "update\n/weight",
                "act\nstd", unit_label):
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right",
                         no_wrap=True)
    biggest = {w: max((_stat(layer, w, "grad_norm") or 0.0) for layer in layers)
               for w in ("init", "final")}
    shown = select_layers(len(layers), all_layers)
    previous = -1
    for i in shown:
        if i != previous + 1:
            table.add_row("⋮", "", "", "", "", "", "", "", "")
        previous = i
        layer = layers[i]
        shape = "×".join(str(d) for d in layer.get("shape") or [])
        table.add_row(
            str(i), layer["name"], shape,
            _grad_cell(_stat(layer, "init", "grad_norm"), biggest["init"]),
            _grad_cell(_stat(layer, "final", "grad_norm"), biggest["final"]),
            num(_stat(layer, "final", "grad_rms"), 2),
            num(_stat(layer, "final", "update_ratio"), 2),
            num(_stat(layer, "final", "act_std"), 2),
            pct(_stat(layer, "final", unit_stat)),
        )
    if len(shown) < len(layers):
        table.caption = f"{len(shown)} of {len(layers)} layers shown; --all-layers for every one"
    return table


def _grad_cell(value: float | None, biggest: float) -> Text:
    text = num(value, 2)
    if value is None:
        return Text(text)
    if value == 0 or (biggest > 0 and value < FAR_BELOW * biggest):
        return Text(text, style="bold red")
    if biggest > 0 and value < 1e-1 * biggest:
        return Text(text, style="yellow")
    return Text(text)


def _stat(layer: dict[str, Any], when: str, key: str) -> float | None:
    values = layer.get(when) or {}
    v = values.get(key)
    return float(v) if isinstance(v, (int, float)) else None


def _layers_from_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer init/final stats rebuilt from layers.csv (for a run with no summary)."""
    rows = [r for r in rows if not str(r.get("phase", "train")).startswith("pretrain")]
    if not rows:
        return []
    by_step: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(r["step"], []).append(r)
    steps = list(by_step)
    init = by_step[steps[0]]
    # a killed run's last step may be half written: end at the last step with every layer
    last = next(s for s in reversed(steps) if len(by_step[s]) >= len(init))
    return [{"name": r["name"], "shape": None, "init": r, "final": f}
            for r, f in zip(init, by_step[last])]


def logged_progress(record: Record) -> tuple[int, float | None, float | None]:
    """(steps logged, first loss, last finite loss) from metrics.csv, for a run with no final
    summary (killed, or still running)."""
    train = [m for m in record.metrics if not str(m.get("phase", "train")).startswith("pretrain")]
    losses = [m["loss"] for m in train if _finite(m.get("loss"))]
    return ((train[-1]["step"] + 1 if train else 0), losses[0] if losses else None,
            losses[-1] if losses else None)


def loss_curve(metrics: list[dict[str, Any]], width: int = 64, height: int = 12) -> RenderableType:
    rows = [m for m in metrics if not str(m.get("phase", "train")).startswith("pretrain")]
    series = {
        "train": [(m["step"], m["loss"]) for m in rows if _finite(m.get("loss"))],
        "test": [(m["step"], m["test_loss"]) for m in rows if _finite(m.get("test_loss"))],
    }
    if not series["train"]:
        return Text("no loss logged", style="yellow")
    return Panel(chart(series, width, height), title="loss", title_align="left", expand=False)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


MARKS = {0: ("•", "cyan"), 1: ("x", "magenta"), 2: ("+", "green"), 3: ("o", "yellow")}


def chart(series: Mapping[str, Sequence[tuple[float, float]]], width: int = 64,
          height: int = 12, log: bool | None = None, xlabel: str = "step") -> Text:
    """A small scatter chart in text; log y-scale when the values span over a decade.

    The x axis is labelled `xlabel` at its left end: training steps, or time steps t.
    """
    points = [p for s in series.values() for p in s]
    ys = [y for _, y in points]
    xs = [x for x, _ in points]
    if log is None:
        log = min(ys) > 0 and max(ys) / min(ys) > 10
    f = (lambda y: math.log10(y)) if log else (lambda y: y)
    lo, hi = f(min(ys)), f(max(ys))
    hi = hi if hi > lo else lo + 1
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    grid = [[(" ", "")] * width for _ in range(height)]
    for k, (_, pts) in enumerate(series.items()):
        mark = MARKS[k % len(MARKS)]
        for x, y in pts:
            col = round((x - x0) / (x1 - x0) * (width - 1))
            row = height - 1 - round((f(y) - lo) / (hi - lo) * (height - 1))
            grid[row][col] = mark
    out = Text()
    top, bottom = num(10 ** hi if log else hi), num(10 ** lo if log else lo)
    pad = max(len(top), len(bottom))
    for r, line in enumerate(grid):
        label = top if r == 0 else bottom if r == height - 1 else ""
        out.append(f"{label:>{pad}} │")
        for ch, style in line:
            out.append(ch, style=style)
        out.append("\n")
    out.append(" " * pad + " └" + "─" * width + "\n")
    left, right = f"{xlabel} {num(x0)}", f"{num(x1)}"
    out.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right + "\n")
    legend = "   ".join(f"{MARKS[k % len(MARKS)][0]} {name}" for k, name in enumerate(series)
                       if series[name])
    out.append(" " * (pad + 2) + legend + ("   (log scale)" if log else ""))
    return out


def verdict_panel(record: Record) -> RenderableType:
    verdicts = (record.summary or {}).get("verdicts") or []
    if not verdicts:
        return Text("no verdict (the run has no summary)", style="yellow")
    body = Text()
    for i, v in enumerate(verdicts):
        if i:
            body.append("\n")
        # Messages name their kind ("vanishing gradients at init: ..."): colour that lead-in.
        style = SEVERITY_STYLE.get(v["severity"], "")
        if v["severity"] == "error":
            body.append(f"{v['kind']}: ", style=style)
        lead, sep, rest = v["message"].partition(": ")
        body.append(lead + sep, style=style if sep else "")
        body.append(rest + "\n")
        for remedy in v.get("remedies", []):
            body.append(f"  → {remedy}\n", style="dim" if v["severity"] == "info" else "")
    body.rstrip()
    return Panel(body, title="verdict", title_align="left", expand=False)


def pretrain_table(pretrain: dict[str, Any]) -> RenderableType:
    """The pretraining phase: each layer's reconstruction loss before and after its turn."""
    how = [pretrain.get("method", "autoencoder"),
           "tied decoder" if pretrain.get("tied", True) else "untied decoder"]
    if pretrain.get("denoising"):
        how.append(f"denoising {pct(pretrain['denoising'])}")
    table = Table(title="layer-wise pretraining, before fine-tuning", title_justify="left",
                  title_style="bold", header_style="bold", box=box.SIMPLE_HEAD,
                  caption_justify="left",
                  caption=f"{', '.join(how)}; {pretrain.get('optimizer')} lr "
                          f"{num(pretrain.get('lr'))}, {pretrain.get('steps_per_layer')} steps "
                          f"per layer; {num(pretrain.get('seconds'))} s")
    for col in ("layer", "steps", "reconstruction\nloss start", "reconstruction\nloss end",
                "input\nvariance", "unexplained\n(end/var)", "seconds", "status"):
        table.add_column(col, justify="left" if col in ("layer", "status") else "right",
                         no_wrap=True)
    for row in pretrain.get("layers", []):
        status = row.get("status", "completed")
        end, var = row.get("loss_end"), row.get("input_variance")
        unexplained = end / var if _finite(end) and _finite(var) and var else None
        table.add_row(row.get("name", str(row["layer"])), str(row.get("steps", "–")),
                      num(row.get("loss_start")), num(end), num(var), pct(unexplained),
                      num(row.get("seconds")),
                      Text(status, style="" if status == "completed" else "bold red"))
    return table


def time_table(summary: dict[str, Any]) -> RenderableType:
    """‖∂L/∂h_t‖ across time steps at init and at the end, with a curve."""
    init, final = summary.get("time_grads_init") or [], summary.get("time_grads_final") or []
    n = len(init)
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    for col in ("t", "init", "end"):
        table.add_column(col, justify="right")
    for t in select_layers(n, False, most=12):
        table.add_row(str(t + 1), num(init[t]), num(final[t]) if t < len(final) else "–")
    # A narrow table would wrap its title, so title and ratio are lines of their own.
    title = Text("gradient through time ‖∂L/∂h_t‖ at init and at the end")
    ratio = Text(f"‖∂L/∂h_1‖ / ‖∂L/∂h_T‖: {num(summary.get('time_grad_ratio_init'))} at init, "
                 f"{num(summary.get('time_grad_ratio_final'))} at the end", style="dim")
    series = {"init": [(t + 1, g) for t, g in enumerate(init) if _finite(g) and g > 0],
              "end": [(t + 1, g) for t, g in enumerate(final) if _finite(g) and g > 0]}
    parts: list[RenderableType] = [title, table, ratio]
    if series["init"]:
        parts.append(Panel(chart(series, 64, 10, xlabel="t"), title="‖∂L/∂h_t‖ by time step t",
                           title_align="left", expand=False))
    zeros = sum(g == 0 for g in [*init, *final])
    if zeros:
        parts.append(Text(f"{zeros} values of exactly 0 (underflowed) are not drawn on the "
                          "log scale", style="dim"))
    return Group(*parts)


# ---------------------------------------------------------------- listing runs


STAMP = re.compile(r"^(\d{8}T\d{6}Z)(?:-(\d+))?$")  # record.utc_stamp(), then -N if taken


def find_runs(root: Path) -> list[Path]:
    """Run directories at `root`, one level under it (runs/NAME) or two (runs/NAME/STAMP).

    Symbolic links are not followed, so a compare record's variants/ are not listed twice.
    """
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for child in _subdirs(root):
        found += [child] if is_run_dir(child) else [g for g in _subdirs(child) if is_run_dir(g)]
    return found


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def run_started(path: Path) -> tuple[datetime, int]:
    """When a run started (UTC), from its directory name; the -N suffix breaks ties."""
    m = STAMP.match(path.name)
    if m:
        return (datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc),
                int(m.group(2) or 0))
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc), 0


def listing_record(path: Path) -> Record:
    """A run read for the listing: summary.json, and metrics.csv only when there is no summary
    of a finished run (a killed or running one), never the larger layers.csv."""
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = None
    record = Record(path, summary, {}, [], [])
    if record.status in ("incomplete", "running"):
        record.metrics = read_csv(path / "metrics.csv")
    return record


def run_list(root: Path) -> RenderableType:
    """Every run under `root`, newest first: name, status, date, steps, final loss, verdicts."""
    paths = sorted(find_runs(root), key=run_started, reverse=True)
    if not paths:
        return Text(f"no runs under {root}", style="yellow")
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True,
                  title=f"runs under {root}, newest first", title_justify="left",
                  caption=f"gradlab report {root}/RUN re-prints one", caption_justify="left")
    for col, justify in (("run", "left"), ("status", "left"),
                         ("started (UTC)", "left"), ("steps", "right"), ("final loss", "right"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "verdict")  # type: ignore[arg-type]
    for path in paths:
        record = listing_record(path)
        s = record.summary or {}
        status = record.status
        style = {"completed": "green", "diverged": "red", "failed": "red"}.get(status, "yellow")
        if status in ("incomplete", "running"):  # what it logged before it stopped (or so far)
            done, _, loss = logged_progress(record)
            steps = f"{done}" + (f"/{s['steps_planned']}" if s.get("steps_planned") else "")
        else:
            steps = f"{s.get('steps_done', '?')}/{s.get('steps_planned', '?')}"
            loss = s.get("final_loss")
        verdicts = ", ".join(v["kind"] for v in s.get("verdicts") or []) or "–"
        run = path.name if path == root else path.relative_to(root).as_posix()
        table.add_row(run, Text(status, style), run_started(path)[0].strftime("%Y-%m-%d %H:%M"),
                      steps, num(loss), verdicts)
    return table
