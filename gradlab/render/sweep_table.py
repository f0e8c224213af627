"""The sweep table in the terminal: one row per grid point, its swept values, how its runs
ended, the field's mean over seeds (with min and max), the mean-field ξ and depth/ξ, and the
verdict (where the seeds' differ, each with how many seeds have it); then the claims. Reads
sweep.json and sweep.csv (`record.sweep`); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gradlab.record.group import field_stats, on_log_scale, seeds_verdicts
from gradlab.record.sweep import default_field, read_sweep, read_table, short_labels
from gradlab.render.style import Column, Fitted, fit_table, num, status_style


def _outcome(rows: list[dict[str, Any]]) -> Text:
    """`completed`, or `1/2 diverged` where the seeds differ."""
    statuses = [str(r.get("status")) for r in rows]
    if len(set(statuses)) == 1:
        return Text(statuses[0], status_style(statuses[0]))
    worst = next((s for s in ("failed", "diverged", "interrupted") if s in statuses),
                 statuses[0])
    return Text(f"{statuses.count(worst)}/{len(statuses)} {worst}", status_style(worst))


def point_summaries(sweep: dict[str, Any], rows: list[dict[str, Any]],
                    field: str) -> list[dict[str, Any]]:
    """One entry per point: its rows (seeds) and the field's mean, min and max over them."""
    by_point: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_point.setdefault(str(r.get("variant")), []).append(r)
    out = []
    for p in sweep["points"]:
        mine = by_point.get(p["name"], [])
        values = [r[field] for r in mine if isinstance(r.get(field), (int, float))
                  and not isinstance(r.get(field), bool)]
        first = mine[0] if mine else {}
        out.append({"name": p["name"], "values": p["values"], "rows": mine,
                    "mean": field_stats(values, field).get("mean") if values else None,
                    "min": min(values) if values else None, "max": max(values) if values else None,
                    "xi": first.get("prediction.depth_scale"),
                    "depth_per_xi": first.get("depth_per_xi"),
                    "verdict": seeds_verdicts([str(r.get("verdict") or "") for r in mine])})
    return out


def sweep_table(sweep: dict[str, Any], rows: list[dict[str, Any]], field: str) -> RenderableType:
    """The points side by side (laid out for the printed width), then the claims."""
    points = point_summaries(sweep, rows, field)
    keys = [a["key"] for a in sweep["grid"]]
    labels = short_labels(keys)
    seeds = len(sweep.get("seeds") or [None])
    spread = seeds > 1

    def build(width: int) -> RenderableType:
        cols = [Column(labels[k], [num(p["values"].get(k)) for p in points]) for k in keys]
        cols += [Column("runs", [_outcome(p["rows"]) if p["rows"] else Text("not run", "yellow")
                                 for p in points], "left"),
                 Column(_short_field(field) + (" mean" if spread else ""),
                        [num(p["mean"]) for p in points])]
        if spread:
            cols.append(Column("min–max", [f"{num(p['min'])}–{num(p['max'])}"
                                           if p["min"] is not None else "–" for p in points],
                               drop=3))
        if any(p["xi"] is not None or p["depth_per_xi"] is not None for p in points):
            cols += [Column("ξ", [num(p["xi"], 2) if p["xi"] is not None else
                                  ("∞" if p["depth_per_xi"] == 0 else "–") for p in points],
                            drop=1),
                     Column("depth/ξ", [num(p["depth_per_xi"], 2) for p in points], drop=1)]
        # the diagnosis stays longer than the seeds' spread
        cols.append(Column("verdict", [p["verdict"].replace(", ", "\n") for p in points],
                           "left", drop=2))
        n = len(points)
        table = fit_table(cols, width, title=f"sweep {sweep.get('name')}: {n} point"
                          + ("s" if n != 1 else "") + (f" × {seeds} seeds" if spread else ""),
                          title_justify="left")
        parts: list[RenderableType] = [table] if table is not None else []
        legend = (f"{field}: mean over the seeds" if spread else field)
        if spread and on_log_scale(field):
            legend += " (geometric, as in a group record)"
        if any(p["xi"] is not None for p in points):
            legend += "; ξ: mean-field depth scale 1/|ln χ₁| (∞ at χ₁ = 1)"
        if any("/" in p["verdict"] for p in points):
            legend += "; verdict: where the seeds' differ, each with how many seeds have it"
        parts.append(Text(legend, "dim"))
        parts += claim_lines(sweep.get("claims") or [])
        return Group(*parts)

    return Fitted(build)


def _short_field(field: str) -> str:
    return field.split(".")[-1] if field.startswith(("final_metrics.", "initial_metrics.")) \
        else field


def claim_lines(claims: list[dict[str, Any]]) -> list[Text]:
    lines = []
    for c in claims:
        mark, style = ("held", "green") if c.get("ok") else ("FAILED", "bold red")
        lines.append(Text.assemble((f"{mark}: ", style), f"{c.get('claim')} "
                                   f"({c.get('rows')} runs)"))
        for failure in c.get("failures") or []:
            lines.append(Text(f"  {failure}", "red"))
    return lines


def render_sweep_dir(path: Path, field: str | None = None) -> RenderableType:
    """`gradlab report SWEEP_DIR`: the table from the record (CorruptRecord if it is not one)."""
    sweep, rows = read_sweep(path), read_table(path)
    return sweep_table(sweep, rows, field or sweep.get("plot") or default_field(rows))
