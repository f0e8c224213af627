"""The sweep's heatmap: one summary field over two swept keys, the mean over seeds per cell,
and, where the keys are depth and a weight-variance knob, the depth mean-field theory
predicts a net trains to (a multiple of ξ: the order-to-chaos phase diagram).

`plot_sweep(sweep_dir, field)` → SWEEP/heatmap.png, from sweep.json and sweep.csv alone
(`record.sweep`; the theory from a point's resolved config.yaml). `heatmap_cells` is the
table of cell means it draws. No torch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.colors import LogNorm, Normalize

from gradlab.analyse.theory import (
    Activation,
    chi1,
    depth_scale,
    fixed_point_q,
    implied_variances,
    predict_mlp,
)
from gradlab.config.messages import did_you_mean
from gradlab.record.group import field_stats, is_group_dir, member_dirs, read_group
from gradlab.record.reader import read_config
from gradlab.record.sweep import default_field, read_sweep, read_table
from gradlab.render.figures import new_figure, quiet_overflow, save

HEATMAP = "heatmap.png"
DEPTH_KEY = "model.depth"
TRAINABLE = 6.0  # Schoenholz et al. 2017: nets train up to about 6ξ
TEXT_CELLS = 150  # cells written into the picture up to this many
FINE = 240  # points of the ξ curve


@dataclass
class Cells:
    """The heatmap's content: `means[iy][ix]` (None: no finite value), and per cell the
    runs, how many diverged and how many have no value (failed, not run)."""

    field: str
    x_key: str
    y_key: str | None
    xs: list[Any]
    ys: list[Any]
    means: list[list[float | None]]
    runs: list[list[int]]
    diverged: list[list[int]]
    missing: list[list[int]]
    averaged_over: list[str]  # swept keys other than the two axes, averaged too
    stopped: list[list[int]] | None = None  # runs interrupted (or killed) before their end


def heatmap_axes(keys: list[str]) -> tuple[str, str | None]:
    """(x key, y key): depth on the y axis when it is swept, else the first key; the next
    key on x. One swept key: it is x, and there is one row."""
    if len(keys) == 1:
        return keys[0], None
    y = DEPTH_KEY if DEPTH_KEY in keys else keys[0]
    x = next(k for k in keys if k != y)
    return x, y


def _ordered(values: list[Any]) -> list[Any]:
    """Numbers ascending; anything else in the grid's order."""
    if all(_is_number(v) for v in values):
        return sorted(values)
    return list(values)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def heatmap_cells(sweep: dict[str, Any], rows: list[dict[str, Any]], field: str,
                  x_key: str | None = None, y_key: str | None = None) -> Cells:
    """Each cell's mean of `field` over its rows (every seed; and every value of a swept key
    that is not an axis): finite values only, geometric for gradient ratios and norms as in
    a group record; a diverged run counts as diverged, not 0."""
    keys = [a["key"] for a in sweep["grid"]]
    if x_key is None:
        x_key, y_key = heatmap_axes(keys)
    grid = {a["key"]: a["values"] for a in sweep["grid"]}
    xs = _ordered(grid[x_key])
    ys = _ordered(grid[y_key]) if y_key else [None]
    point_of = {p["name"]: p["values"] for p in sweep["points"]}
    found: list[list[list[float]]] = [[[] for _ in xs] for _ in ys]
    runs = [[0] * len(xs) for _ in ys]
    diverged = [[0] * len(xs) for _ in ys]
    missing = [[0] * len(xs) for _ in ys]
    stopped = [[0] * len(xs) for _ in ys]
    for r in rows:
        values = point_of.get(str(r.get("variant")))
        if values is None:
            continue
        ix = xs.index(values[x_key])
        iy = ys.index(values[y_key]) if y_key else 0
        runs[iy][ix] += 1
        x = r.get(field)
        if r.get("status") == "diverged":
            diverged[iy][ix] += 1
        if r.get("status") in ("interrupted", "incomplete"):
            stopped[iy][ix] += 1  # its value is from part of the run
        if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
            found[iy][ix].append(float(x))
        elif r.get("status") != "diverged":
            missing[iy][ix] += 1
    # the mean a group record takes: geometric for gradient ratios and norms (`field_stats`)
    means: list[list[float | None]] = [
        [field_stats(list(v), field).get("mean") if v else None for v in row] for row in found]
    others = [k for k in keys if k not in (x_key, y_key)]
    return Cells(field, x_key, y_key, xs, ys, means, runs, diverged, missing, others, stopped)


def fields_of(rows: list[dict[str, Any]]) -> list[str]:
    """The numeric columns a heatmap can show."""
    return sorted({k for r in rows for k, v in r.items() if _is_number(v) and k != "seed"})


def unplottable(rows: list[dict[str, Any]], field: str) -> str | None:
    """Why a heatmap of `field` cannot be drawn from sweep.csv's rows (None if it can): a text
    column (status, verdict, a path), or no run has a number in it and it is not an empty
    column beside diverged runs (drawn as such). With a did-you-mean among the numeric columns."""
    text = [r[field] for r in rows if r.get(field) not in (None, "") and not _is_number(r[field])]
    if text:
        return (f"{field!r} is not a number (e.g. {str(text[0])!r}): a heatmap needs a numeric "
                f"field, such as {', '.join(fields_of(rows)[:6])}")
    if any(_is_number(r.get(field)) for r in rows) or \
            (rows and field in rows[0] and any(r.get("status") == "diverged" for r in rows)):
        return None
    known = fields_of(rows)
    return (f"no run of the sweep has the field {field!r}{did_you_mean(field, known)}; numeric "
            f"fields: {', '.join(known[:12])}{', …' if len(known) > 12 else ''}")


def _edges(values: list[float], log: bool) -> np.ndarray:
    """Cell edges around sorted values: midpoints (geometric on a log axis), the outer ones
    half a step out."""
    v = np.log(np.asarray(values, dtype=float)) if log else np.asarray(values, dtype=float)
    if len(v) == 1:
        mid = np.array([v[0] - 0.5, v[0] + 0.5]) if not log else np.array([v[0] - 0.35,
                                                                            v[0] + 0.35])
    else:
        inner = (v[1:] + v[:-1]) / 2
        mid = np.concatenate([[v[0] - (inner[0] - v[0])], inner, [v[-1] + (v[-1] - inner[-1])]])
    return np.exp(mid) if log else mid


def _spans_decades(values: list[Any], ratio: float = 10.0) -> bool:
    nums = [float(v) for v in values if _is_number(v)]
    return len(nums) == len(values) and len(nums) > 1 and min(nums) > 0 and \
        max(nums) / min(nums) >= ratio


def log_axis(values: list[Any]) -> bool:
    """A log axis for positive values that span a decade, or that are log-spaced (a `log:`
    range: equal ratios), so every cell is as wide as the next."""
    if _spans_decades(values):
        return True
    if not _spans_decades(values, 2.0) or len(values) < 3:
        return False
    logs = np.diff(np.log(sorted(float(v) for v in values)))
    return bool(np.ptp(logs) <= 0.05 * np.mean(logs))


def _set(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    patched = copy.deepcopy(config)
    node = patched
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        node[part] = child if isinstance(child, dict) else {"scheme": child} if \
            isinstance(child, str) else {}
        node = node[part]
    node[leaf] = value
    return patched


def theory_along(config: dict[str, Any], key: str, xs: list[float]) -> tuple[
        list[float | None], list[float | None], list[float | None]]:
    """(ξ, χ₁, σw²) of mean-field theory for each value of `key` set into a resolved config
    (None where the theory does not apply)."""
    xis: list[float | None] = []
    chis: list[float | None] = []
    sw2s: list[float | None] = []
    for x in xs:
        model = _set(config, key, x).get("model") or {}
        sw2, sb2, reasons, _ = implied_variances(model)
        if reasons or sw2 is None or sb2 is None:
            xis.append(None)
            chis.append(None)
            sw2s.append(None)
            continue
        act = Activation(str(model.get("activation", "relu")),
                         float(model.get("negative_slope", 0.01)),
                         float(model.get("prelu_init", 0.25)), float(model.get("elu_alpha", 1.0)))
        chi = chi1(act, sw2, sb2, fixed_point_q(act, sw2, sb2))
        xis.append(depth_scale(chi))
        chis.append(chi)
        sw2s.append(sw2)
    return xis, chis, sw2s


def point_config(sweep_dir: Path, name: str) -> dict[str, Any]:
    """A point's resolved config.yaml from its record (a group: its first seed's)."""
    target = Path(sweep_dir) / "variants" / name
    if is_group_dir(target):
        first = next(iter(member_dirs(target, read_group(target)).values()), None)
        return read_config(first) if first is not None else {}
    return read_config(target)


def _theory_overlay(sweep_dir: Path, sweep: dict[str, Any], cells: Cells) -> dict[str, Any] | None:
    """The ξ curve over the x axis, when the axes are depth and a numeric knob the theory
    reads, and nothing else is swept."""
    if cells.y_key != DEPTH_KEY or cells.averaged_over or not all(_is_number(x) for x in cells.xs):
        return None
    config: dict[str, Any] = {}
    for p in sweep["points"]:
        config = point_config(sweep_dir, p["name"])
        if config:
            break
    if not config or not predict_mlp(config).get("predictable"):
        return None
    log = log_axis(cells.xs)
    edges = _edges([float(x) for x in cells.xs], log)  # the curve spans the cells drawn
    lo, hi = float(edges[0]), float(edges[-1])
    if lo <= 0:
        lo = float(min(cells.xs))
    fine = list(np.geomspace(lo, hi, FINE) if log else np.linspace(lo, hi, FINE))
    xis, chis, sw2s = theory_along(config, cells.x_key, fine)
    at_points = theory_along(config, cells.x_key, [float(x) for x in cells.xs])
    if any(x is None for x in xis) or len({round(float(c or 0), 12) for c in chis}) < 2:
        return None  # the knob does not move the prediction (not a weight-variance knob)
    critical = None
    for a, b, ca, cb in zip(fine[:-1], fine[1:], chis[:-1], chis[1:]):
        if ca is not None and cb is not None and (ca - 1) * (cb - 1) <= 0 and ca != cb:
            critical = a + (b - a) * (1 - ca) / (cb - ca)
            break
    # a second x axis in σw², where σw² is a power law in the knob (std or gain: σw² ∝ x²)
    scale = None
    xs_at, sw_at = [float(x) for x in cells.xs], at_points[2]
    if all(s is not None and s > 0 for s in sw_at) and all(x > 0 for x in xs_at):
        ratios = [s / x**2 for s, x in zip(sw_at, xs_at) if s is not None]
        if max(ratios) - min(ratios) <= 1e-9 * max(ratios):
            scale = ratios[0]
    return {"x": fine, "xi": xis, "critical": critical, "sw2_per_x2": scale,
            "sw2": sw_at, "activation": (config.get("model") or {}).get("activation")}


def _claim_multiples(sweep: dict[str, Any]) -> list[float]:
    """The depth/ξ thresholds of the sweep's claims (`where: {depth_per_xi: {min/max}}`)."""
    found = set()
    for claim in sweep.get("expect") or []:
        cond = ((claim or {}).get("where") or {}).get("depth_per_xi")
        if isinstance(cond, dict):
            found |= {float(v) for v in cond.values() if _is_number(v)}
    return sorted(found - {TRAINABLE})


def _format(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.2f}" if 0.01 <= abs(x) < 1 else f"{x:.3g}"


@quiet_overflow
def plot_sweep(sweep_dir: Path, field: str | None = None) -> Path:
    """Draw SWEEP/heatmap.png of `field` (default: the sweep's `plot`, else the test metric);
    ValueError for a field no row has."""
    sweep_dir = Path(sweep_dir)
    sweep, rows = read_sweep(sweep_dir), read_table(sweep_dir)
    field = field or sweep.get("plot") or default_field(rows)
    if why := unplottable(rows, field):
        raise ValueError(why)
    cells = heatmap_cells(sweep, rows, field)
    overlay = _theory_overlay(sweep_dir, sweep, cells)
    fig = _draw(sweep, cells, overlay)
    return save(fig, sweep_dir / HEATMAP)


def _draw(sweep: dict[str, Any], cells: Cells, overlay: dict[str, Any] | None) -> Any:
    numeric_x = all(_is_number(x) for x in cells.xs)
    numeric_y = cells.y_key is not None and all(_is_number(y) for y in cells.ys)
    log_x, log_y = numeric_x and log_axis(cells.xs), numeric_y and log_axis(cells.ys)
    top_axis = bool(overlay and overlay.get("sw2_per_x2"))
    bottom = 0.75 + (0.75 if overlay else 0.0)
    top = 0.95 if top_axis else 0.5
    height = (4.2 if cells.y_key else 1.4) + bottom + top
    fig, axes = new_figure(8.5, height, left=1.05, right=0.8, bottom=bottom, top=top)
    ax = axes[0][0]
    xe = _edges([float(x) for x in cells.xs], log_x) if numeric_x else \
        np.arange(len(cells.xs) + 1) - 0.5
    ye = _edges([float(y) for y in cells.ys], log_y) if numeric_y else \
        np.arange(len(cells.ys) + 1) - 0.5
    grid = np.array([[np.nan if m is None else m for m in row] for row in cells.means], dtype=float)
    finite = grid[np.isfinite(grid)]
    norm: Normalize
    if finite.size and finite.min() > 0 and finite.max() / finite.min() >= 100:
        norm = LogNorm(vmin=float(finite.min()), vmax=float(finite.max()))
    elif "accuracy" in cells.field:
        norm = Normalize(vmin=0.0, vmax=1.0)
    else:
        norm = Normalize(vmin=float(finite.min()) if finite.size else 0.0,
                         vmax=float(finite.max()) if finite.size else 1.0)
    cmap = _colormap()
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(grid), cmap=cmap, norm=norm,
                         edgecolors="white", linewidth=0.5)
    ax.set_facecolor("#d9d9d9")  # a cell without a value
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    centres_x = [float(x) for x in cells.xs] if numeric_x else \
        [float(i) for i in range(len(cells.xs))]
    centres_y = [float(y) for y in cells.ys] if numeric_y else \
        [float(i) for i in range(len(cells.ys))]
    ax.set_xticks(centres_x, [_tick(x) for x in cells.xs])
    ax.set_yticks(centres_y, [_tick(y) for y in cells.ys] if cells.y_key else [""])
    ax.minorticks_off()
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    ax.set_xlabel(cells.x_key)
    ax.set_ylabel(f"{cells.y_key} (hidden layers)" if cells.y_key == DEPTH_KEY
                  else (cells.y_key or ""))
    _write_cells(ax, cells, centres_x, centres_y, mesh, norm)
    if overlay:
        _draw_theory(ax, overlay, sweep, xe, ye)
    bar = fig.colorbar(mesh, ax=ax, pad=0.02, fraction=0.045)
    bar.set_label(cells.field + (" (log scale)" if isinstance(norm, LogNorm) else ""))
    seeds = sweep.get("seeds") or []
    over = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    if cells.averaged_over:
        over += " and over " + ", ".join(cells.averaged_over)
    title = f"{sweep.get('name')}: {cells.field} ({over})"
    if any(d for row in cells.diverged for d in row):
        title += ";  × diverged (n: of that many seeds)"
    if any(k for row in cells.stopped or [] for k in row):
        title += ";  stopped: a run cut short"
    ax.set_title(title, fontsize=10, pad=30 if top_axis else 6)
    return fig


def _colormap() -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"]


def _tick(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _write_cells(ax: Any, cells: Cells, cx: list[float], cy: list[float], mesh: Any,
                 norm: Normalize) -> None:
    """Each cell's mean (when the grid is small enough to read), × where runs diverged."""
    many = len(cells.xs) * len(cells.ys) > TEXT_CELLS
    for iy, y in enumerate(cy):
        for ix, x in enumerate(cx):
            m, d, n = cells.means[iy][ix], cells.diverged[iy][ix], cells.runs[iy][ix]
            colour = "black"
            if m is not None:
                r, g, b, _ = mesh.cmap(norm(m))
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            parts = []
            if m is not None and not many:
                parts.append(_format(m))
            if d:
                parts.append("×" if d == n else f"×{d}")
            k = cells.stopped[iy][ix] if cells.stopped else 0
            if k:
                parts.append("stopped" if k == n else f"{k} stopped")
            if m is None and not d and n:
                parts.append("no value")
            if parts:  # above the theory's lines, on a patch of the cell's own colour
                face = mesh.cmap(norm(m)) if m is not None else "lightgrey"
                ax.text(x, y, "\n".join(parts), ha="center", va="center", fontsize=8,
                        color=colour, zorder=5,
                        bbox={"facecolor": face, "edgecolor": "none", "pad": 1.0})


def _draw_theory(ax: Any, overlay: dict[str, Any], sweep: dict[str, Any], xe: np.ndarray,
                 ye: np.ndarray) -> None:
    """6ξ (and the claims' multiples of ξ) over the x axis, the critical point, a legend
    below the axes, and σw² along the top."""
    outline = [patheffects.withStroke(linewidth=3.4, foreground="black")]
    x = np.asarray(overlay["x"], dtype=float)
    xi = np.asarray([np.inf if v is None else v for v in overlay["xi"]], dtype=float)
    cap = float(ye[-1]) * 4  # ξ = ∞ at the critical point: drawn off the top
    lines: list[tuple[float, Any, float, str]] = [
        (TRAINABLE, "-", 2.2, f"{TRAINABLE:g}ξ: the depth nets train to (Schoenholz et al. 2017)")]
    styles = iter([(0, (1, 1.5)), (0, (5, 2, 1, 2)), (0, (3, 3))])
    lines += [(k, next(styles, ":"), 1.6, f"{k:g}ξ: this sweep's claim")
              for k in _claim_multiples(sweep)]
    for k, style, width, label in lines:
        ax.plot(x, np.minimum(k * xi, cap), linestyle=style, color="white", linewidth=width,
                path_effects=outline, label=label)
    if overlay["critical"] is not None:
        ax.axvline(overlay["critical"], color="white", linestyle=(0, (6, 3)), linewidth=1.4,
                   path_effects=outline, label="critical point: χ₁ = 1")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8,
                       frameon=False, handlelength=3.2)
    for handle in legend.legend_handles:  # the legend's lines: black, as white is invisible
        if handle is not None:
            handle.set_color("black")
            handle.set_path_effects([])
    legend.set_title("mean-field theory, ξ = 1/|ln χ₁|", prop={"size": 8})
    c = overlay.get("sw2_per_x2")
    if c:
        top = ax.secondary_xaxis("top", functions=(lambda v: c * np.square(v),
                                                   lambda s: np.sqrt(np.maximum(s, 0) / c)))
        ticks = [s for s in overlay.get("sw2") or [] if s is not None]
        top.set_xticks(ticks, [f"{s:.2g}" for s in ticks])
        top.minorticks_off()
        top.set_xlabel(f"σw² (the weights' variance × fan-in; {overlay.get('activation')})",
                       fontsize=9)
