"""The terminal report of one run: header, per-layer table, loss curve, verdicts, and the
pretraining and through-time tables where the run has them.

Every function takes a record (`record.reader.read_record`) and *returns* a rich renderable;
only the CLI prints. Nothing here imports the trainer or torch.

Each part is laid out for the width it is printed at (`style.Fitted`): at 80 columns the layer
table keeps the gradients and drops its extra columns, at 120 it shows them too; the three
boxes (header, loss, verdict) all span the terminal, up to `style.MAX_WIDTH`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradlab.record.reader import Record, is_training_row
from gradlab.render.chart import chart
from gradlab.render.prediction import theory_lines
from gradlab.render.style import (
    SEVERITY_STYLE,
    Column,
    Fitted,
    box_width,
    finite,
    fit_table,
    num,
    pct,
    short,
    status_style,
)

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
    return Fitted(lambda width: _header(record, width))


def _header(record: Record, width: int) -> RenderableType:
    s = record.summary or {}
    status = record.status
    style = status_style(status)
    inner = box_width(width) - 4  # the panel's border and padding
    name = f"{s.get('name', record.path.parent.name)}"
    lines = Text()
    lines.append(name, style="bold")
    lines.append("  ")
    lines.append(status, style=style)
    done: int | None
    if status in ("incomplete", "running"):  # no final summary: what it logged so far
        done, initial, final = logged_progress(record)
        if isinstance(s.get("steps_done"), int):  # a live count (gradlab.watch's report())
            done = max(done, s["steps_done"])
    else:
        done, initial, final = s.get("steps_done"), s.get("initial_loss"), s.get("final_loss")
    planned = s.get("steps_planned")  # None: a watched loop of unknown length, or no summary
    steps = f"{done}/{planned if planned is not None else '?'} steps"
    speed = s.get("steps_per_second")
    lead = f"{name}  {status}"  # already in `lines`, in its styles
    lines.append(_packed(lead + "  ", [f"{steps} in {num(s.get('seconds'))} s",
                                       f"({num(speed)} steps/s)", f"on {s.get('device', '?')}"],
                         inner, sep="", indent=2)[len(lead):] + "\n")
    metrics = s.get("final_metrics") or {}
    loss = f"loss {num(initial)} → {num(final)}"
    lines.append(_packed(loss + "   (", [f"{k} {num(v)}" for k, v in metrics.items()], inner,
                         end=")") if metrics else loss)
    lines.append("\n")
    lines.append(f"grad ratio first/last layer: {num(s.get('grad_ratio_init'))} at init, "
                 f"{num(s.get('grad_ratio_final'))} at the end\n")
    if s.get("overrides"):
        lines.append("made with " + " ".join(f"--set {o}" for o in s["overrides"]) + "\n",
                     style="dim")
    clip = (record.config.get("train") or {}).get("clip") or {}
    if clip.get("seen") == "after":  # a watched loop's clipping, as it told gradlab
        limit = f"norm {num(clip.get('max_norm'))}" if clip.get("by") == "norm" else \
            f"value {num(clip.get('max_value'))}"
        lines.append(f"gradients recorded after the loop's clipping to {limit}: a larger one "
                     "reads as capped\n", style="yellow")
    precision = precision_line(s.get("precision"))
    if precision:
        lines.append(_packed("", precision, inner, indent=2) + "\n")
    for line in theory_lines(s):  # the mean-field prediction, and how step 0 agrees with it
        lines.append(line + "\n", style="dim")
    if s.get("flush_denormal"):
        zeroed = s.get("flushed_zero_layers")
        which = (f"{zeroed} layer's gradient was" if zeroed == 1
                 else f"{zeroed} layers' gradients were")
        lines.append("flush_denormal is on: numbers smaller than 1.2e-38 were rounded to 0, so a "
                     "gradient that small shows as exactly 0"
                     + (f"; at the first step {which} exactly 0" if zeroed else "") + "\n",
                     style="dim")
    denormal = s.get("denormal_layers")
    if denormal:
        which = "1 layer's gradient was" if denormal == 1 else f"{denormal} layers' gradients were"
        lines.append(f"at the first step {which} denormal (every entry below 1.2e-38): kept, "
                     "as IEEE arithmetic has them, but some CPUs compute such numbers several "
                     "times slower; flush_denormal: true rounds them to 0\n", style="dim")
    if s.get("error"):
        lines.append(f"error: {s['error']}\n", style="red")
    if record.summary is None or record.status == "incomplete":
        lines.append("this run stopped without finishing its record (killed?): "
                     "showing what it logged\n", style="yellow")
    lines.append(str(record.path), style="dim")
    return Panel(lines, title="gradlab run", title_align="left", width=box_width(width))


def precision_line(p: object) -> list[str]:
    """The header's pieces on a bf16/fp16 run: the dtype, the loss scale and what it did,
    gradients lost to underflow at init and the headroom left (nothing in fp32)."""
    if not isinstance(p, dict) or not p.get("dtype"):
        return []
    parts = [f"precision {p['dtype']}"]
    if p.get("loss_scale"):
        scale = f"loss scale {p['loss_scale']}"
        if p.get("scale_init") is not None and p.get("scale_final") is not None:
            scale += f" {num(p['scale_init'])} → {num(p['scale_final'])}"
        parts.append(scale)
    n = p.get("skipped_steps")
    if isinstance(n, int) and (n or p.get("loss_scale") == "dynamic"):
        # a dynamic scale says how often it backed off, 0 included; a static one never skips
        parts.append(f"{n} step{'s' if n != 1 else ''} skipped")
    under = p.get("underflow_init")
    if isinstance(under, (int, float)) and not isinstance(under, bool):
        parts.append(f"{100 * under:.3g}% of gradient entries underflowed at init")
    room = p.get("headroom")
    if isinstance(room, (int, float)) and not isinstance(room, bool):
        parts.append(f"headroom {num(room)} orders of magnitude")
    return parts


def _packed(lead: str, items: list[str], width: int, sep: str = ",", end: str = "",
            indent: int | None = None) -> str:
    """`lead` then the items, each but the last followed by `sep`, wrapped between items (a
    name is never parted from its number) at `width`; the lines after the first indented by
    `indent`, by default aligned under the first item where that leaves room."""
    if indent is None:
        indent = len(lead) if width - len(lead) >= 30 else 2
    lines, line = [], lead
    for i, item in enumerate(items):
        item += end if i == len(items) - 1 else sep
        piece = item if i == 0 else " " + item
        if len(line) + len(piece) > width and line.strip():
            lines.append(line.rstrip())
            line = " " * indent + item
        else:
            line += piece
    return "\n".join([*lines, line])


def select_layers(n: int, all_layers: bool, most: int = 14) -> list[int]:
    """Indices to show: all of a shallow net; first, last and every k-th of a deep one."""
    if all_layers or n <= most:
        return list(range(n))
    k = math.ceil(n / (most - 6))
    keep = {0, 1, 2, n - 3, n - 2, n - 1} | set(range(0, n, k))
    return sorted(i for i in keep if 0 <= i < n)


# The layer table's columns: (header, when, statistic, drop). `drop` 0 is always shown; the
# others go, highest first, when the width is short: the gradient norms stay.
TABLE_STATS: list[tuple[str, str, str, int]] = [
    ("grad\ninit", "init", "grad_norm", 0),
    ("grad\nend", "final", "grad_norm", 0),
    ("‖∂L/∂z‖\ninit", "init", "delta_norm", 6),
    ("‖∂L/∂z‖\nend", "final", "delta_norm", 6),
    ("grad\nRMS", "final", "grad_rms", 4),
    ("update\n/weight", "final", "update_ratio", 2),
    ("weight\nnorm", "final", "weight_norm", 5),
    ("act\nmean", "final", "act_mean", 5),
    ("act\nstd", "final", "act_std", 3),
]


def layer_table(record: Record, all_layers: bool = False) -> RenderableType:
    layers = (record.summary or {}).get("layers") or _layers_from_rows(record.layers)
    if not layers:
        return Text("no layer statistics were logged", style="yellow")
    return Fitted(lambda width: _layer_table(record, layers, all_layers, width))


def _layer_table(record: Record, layers: list[dict[str, Any]], all_layers: bool,
                 width: int) -> RenderableType:
    biggest = {w: max((_stat(layer, w, "grad_norm") or 0.0) for layer in layers)
               for w in ("init", "final")}
    shown = select_layers(len(layers), all_layers)
    rows: list[dict[str, Any] | None] = []  # None: the "⋮" of layers left out
    previous = -1
    for i in shown:
        if i != previous + 1:
            rows.append(None)
        previous = i
        rows.append({"i": i, **layers[i]})

    def cells(make: Any) -> list[Any]:
        return [make(r) if r is not None else "" for r in rows]

    columns = [
        Column("#", [str(r["i"]) if r is not None else "⋮" for r in rows]),
        Column("layer", cells(lambda r: r["name"]), justify="left", name=True),
        Column("shape", cells(lambda r: "×".join(str(d) for d in r.get("shape") or [])),
               justify="left", drop=1),
    ]
    for head, when, key, drop in TABLE_STATS:
        if all(_stat(layers[i], when, key) is None for i in shown):
            continue  # measured for no layer shown (the cells of a recurrent net: no δ, no act)
        if key == "grad_norm":
            columns.append(Column(head, cells(
                lambda r, when=when, key=key: _grad_cell(_stat(r, when, key), biggest[when]))))
        else:
            columns.append(Column(head, cells(
                lambda r, when=when, key=key: short(_stat(r, when, key))), drop=drop))
    # saturation where a layer's activation saturates, dead units where its units can die:
    # each layer's own activation, so a model that mixes them (ReLU convolutions, a tanh
    # layer) has both columns
    for unit_stat, unit_label in (("act_saturated", "saturated"), ("act_dead", "dead")):
        if any(_stat(layers[i], "final", unit_stat) is not None for i in shown):
            columns.append(Column(unit_label, cells(
                lambda r, unit_stat=unit_stat: pct(_stat(r, "final", unit_stat)))))
    table = fit_table(columns, width)
    assert table is not None  # fit_table shortens names rather than give up
    # the title and the notes on lines of their own: a narrow table would wrap them
    parts: list[RenderableType] = [
        Text("per-layer statistics (gradient norm at init and at the end)", style="italic"),
        table]
    if len(shown) < len(layers):
        parts.append(Text(f"{len(shown)} of {len(layers)} layers shown; --all-layers for "
                          "every one", style="dim"))
    if "‖∂L/∂z‖\ninit" in {c.header for c in table.columns}:
        parts.append(Text("‖∂L/∂z‖: the backward signal at the layer's output (its "
                          "pre-activation); grad: the weight's gradient", style="dim"))
    return Group(*parts)


def _grad_cell(value: float | None, biggest: float) -> Text:
    text = short(value)
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


def loss_curve(metrics: list[dict[str, Any]], height: int = 12) -> RenderableType:
    """The training and test loss in a box as wide as the report's others."""
    rows = [m for m in metrics if is_training_row(m)]
    series = {
        "train": [(m["step"], m["loss"]) for m in rows if finite(m.get("loss"))],
        "test": [(m["step"], m["test_loss"]) for m in rows if finite(m.get("test_loss"))],
    }
    if not series["train"]:
        return Text("no loss logged", style="yellow")
    return chart_box(series, "loss", height)


def chart_box(series: Mapping[str, Sequence[tuple[float, float]]], title: str, height: int,
              xlabel: str = "step") -> RenderableType:
    """A text chart filling a box of the report's width (border and padding: 4 columns)."""
    def build(width: int) -> RenderableType:
        wide = box_width(width)
        return Panel(chart(series, height=height, xlabel=xlabel, fit=wide - 4), title=title,
                     title_align="left", width=wide)
    return Fitted(build)


def verdict_panel(record: Record) -> RenderableType:
    verdicts = (record.summary or {}).get("verdicts") or []
    if not verdicts:
        return Text("no verdict (the run has no summary)", style="yellow")
    return Fitted(lambda width: _verdict_panel(record, verdicts, width))


def _verdict_panel(record: Record, verdicts: list[dict[str, Any]], width: int) -> RenderableType:
    # one grid: a remedy that wraps keeps its indent under the arrow
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")  # a path longer than the line folds, never cut: it is copied
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
    return Panel(grid, title="verdict", title_align="left", width=box_width(width))


def pretrain_table(pretrain: dict[str, Any]) -> RenderableType:
    """The pretraining phase: each layer's reconstruction loss before and after its turn."""
    how = [pretrain.get("method", "autoencoder"),
           "tied decoder" if pretrain.get("tied", True) else "untied decoder"]
    if pretrain.get("denoising"):
        how.append(f"denoising {pct(pretrain['denoising'])}")
    caption = (f"{', '.join(how)}; {pretrain.get('optimizer')} lr {num(pretrain.get('lr'))}, "
               f"{pretrain.get('steps_per_layer')} steps per layer; "
               f"{num(pretrain.get('seconds'))} s")
    rows = pretrain.get("layers", [])
    unexplained = []
    for row in rows:
        end, var = row.get("loss_end"), row.get("input_variance")
        unexplained.append(end / var if finite(end) and finite(var) and var else None)
    statuses = [row.get("status", "completed") for row in rows]

    def columns(wide: bool) -> list[Column]:
        loss = "reconstruction\nloss " if wide else "loss\n"
        return [
            Column("layer", [row.get("name", str(row["layer"])) for row in rows], "left",
                   name=True),
            Column("steps", [str(row.get("steps", "–")) for row in rows]),
            Column(loss + "start", [short(row.get("loss_start"), 3) for row in rows]),
            Column(loss + "end", [short(row.get("loss_end"), 3) for row in rows]),
            Column("input\nvariance", [short(row.get("input_variance"), 3) for row in rows]),
            Column("unexplained\n(end/var)", [pct(u) for u in unexplained]),
            Column("seconds", [num(row.get("seconds")) for row in rows]),
            Column("status", [Text(st, style="" if st == "completed" else "bold red")
                              for st in statuses], "left"),
        ]

    def build(width: int) -> RenderableType:
        # the headers say "reconstruction loss" where there is room, else the title does
        table = fit_table(columns(True), width, gaps=(2,), shorten=False)
        title = "layer-wise pretraining, before fine-tuning"
        if table is None:
            table = fit_table(columns(False), width)
            title += ": each layer's reconstruction loss"
        assert table is not None
        return Group(Text(title, style="bold"), table, Text(caption, style="dim"))

    return Fitted(build)


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
        parts.append(chart_box(series, "‖∂L/∂h_t‖ by time step t", 10, xlabel="t"))
    zeros = sum(g == 0 for g in [*init, *final])
    if zeros:
        parts.append(Text(f"{zeros} values of exactly 0 (underflowed) are not drawn on the "
                          "log scale", style="dim"))
    return Group(*parts)

