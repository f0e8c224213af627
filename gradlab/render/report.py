"""The terminal report of one run: header, per-layer table, loss curve, verdicts, and the
pretraining and through-time tables where the run has them.

Every function takes a record (`record.reader.read_record`) and *returns* a rich renderable;
only the CLI prints. Nothing here imports the trainer or torch.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradlab.config.schema import SATURATING
from gradlab.record.reader import Record, is_training_row
from gradlab.render.chart import chart
from gradlab.render.prediction import theory_lines
from gradlab.render.style import SEVERITY_STYLE, finite, num, pct, status_style

FAR_BELOW = 1e-3  # a gradient this far below the layer with the largest one is highlighted


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
    style = status_style(status)
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
    for line in theory_lines(s):  # the mean-field prediction, and how step 0 agrees with it
        lines.append(line + "\n", style="dim")
    if s.get("flush_denormal"):
        zeroed = s.get("flushed_zero_layers")
        lines.append("flush_denormal: values below 1.2e-38 were set to 0"
                     + (f"; {zeroed} layers' gradients are exactly 0" if zeroed else "") + "\n",
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
    unit_stat, unit_label = ("act_saturated", "saturated") if act in SATURATING \
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
    rows = [r for r in rows if is_training_row(r)]
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
    train = [m for m in record.metrics if is_training_row(m)]
    losses = [m["loss"] for m in train if finite(m.get("loss"))]
    return ((train[-1]["step"] + 1 if train else 0), losses[0] if losses else None,
            losses[-1] if losses else None)


def loss_curve(metrics: list[dict[str, Any]], width: int = 64, height: int = 12) -> RenderableType:
    rows = [m for m in metrics if is_training_row(m)]
    series = {
        "train": [(m["step"], m["loss"]) for m in rows if finite(m.get("loss"))],
        "test": [(m["step"], m["test_loss"]) for m in rows if finite(m.get("test_loss"))],
    }
    if not series["train"]:
        return Text("no loss logged", style="yellow")
    return Panel(chart(series, width, height), title="loss", title_align="left", expand=False)


def verdict_panel(record: Record) -> RenderableType:
    verdicts = (record.summary or {}).get("verdicts") or []
    if not verdicts:
        return Text("no verdict (the run has no summary)", style="yellow")
    # one grid: a remedy that wraps keeps its indent under the arrow
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for i, v in enumerate(verdicts):
        if i:
            grid.add_row("", "")
        # Messages name their kind ("vanishing gradients: ..."): colour that lead-in.
        style = SEVERITY_STYLE.get(v["severity"], "")
        line = Text()
        if v["severity"] == "error":
            line.append(f"{v['kind']}: ", style=style)
        lead, sep, rest = v["message"].partition(": ")
        line.append(lead + sep, style=style if sep else "")
        line.append(rest)
        grid.add_row(Text("•", style=style), line)
        for remedy in v.get("remedies", []):
            grid.add_row(Text("  →"), Text(remedy, style="dim" if v["severity"] == "info" else ""))
    if any(v.get("fixes") for v in verdicts if v["severity"] != "info"):
        grid.add_row("", "")
        grid.add_row("", Text(f"gradlab fix {record.path / 'config.yaml'} runs each remedy and "
                              "ranks them by what the net then learns", style="dim"))
    return Panel(grid, title="verdict", title_align="left", expand=False)


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
        unexplained = end / var if finite(end) and finite(var) and var else None
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
    series = {"init": [(t + 1, g) for t, g in enumerate(init) if finite(g) and g > 0],
              "end": [(t + 1, g) for t, g in enumerate(final) if finite(g) and g > 0]}
    parts: list[RenderableType] = [title, table, ratio]
    if series["init"]:
        parts.append(Panel(chart(series, 64, 10, xlabel="t"), title="‖∂L/∂h_t‖ by time step t",
                           title_align="left", expand=False))
    zeros = sum(g == 0 for g in [*init, *final])
    if zeros:
        parts.append(Text(f"{zeros} values of exactly 0 (underflowed) are not drawn on the "
                          "log scale", style="dim"))
    return Group(*parts)

