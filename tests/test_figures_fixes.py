"""Figure defects a user walkthrough found: a gradient ratio that was not measured (a head
alone, summary.json null) is said in words on its row, never drawn as a NaN/Inf in the
exploding zone, while a measured NaN/Inf still is; a value whose neighbours are missing (a
diverged run's one logged update ratio) is drawn with a marker; every legend lies inside its
figure."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradlab.record.reader import Record, is_training_row, read_record
from gradlab.render import compare_figures, figures, run_figures, step_figures
from gradlab.runner import run_config

# diverges at step 4 of 30, probed every 10: its update ratios are step 0's alone
DIVERGING = {"name": "boom", "model": {"depth": 8, "activation": "relu", "init": "kaiming_normal"},
             "train": {"lr": 1.0, "steps": 30, "optimizer": "sgd", "eval_every": 30},
             "probe": {"every": 10}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Record]:
    out = tmp_path_factory.mktemp("runs")
    return {name: read_record(run_config(cfg, out).path) for name, cfg in (
        ("deep", tiny_config(name="deep")),
        ("head", tiny_config(name="head", model={"depth": 0})),  # one layer: no first ÷ last
        ("one", tiny_config(name="one", model={"depth": 1})),  # one hidden layer and the head
        ("boom", tiny_config(**DIVERGING)),
    )}


def with_summary(record: Record, **changes: object) -> Record:
    return dataclasses.replace(record, summary={**(record.summary or {}), **changes})


def row_artists(ax, y: float) -> tuple[list[Line2D], list[str]]:
    """The lines with a point on row y of the ratio chart, and the words written on it."""
    points = [x for x in ax.get_lines()
              if any(np.isclose(v, y) for v in np.asarray(x.get_ydata(), dtype=float))]
    words = [t.get_text() for t in ax.texts  # an annotation's point is its xy
             if np.isclose(getattr(t, "xy", t.get_position())[1], y)]
    return points, words


def row_of(ax, name: str) -> float:
    [y] = [t for t, label in zip(ax.get_yticks(), ax.get_yticklabels())
           if label.get_text() == name]
    return float(y)


# ------------------------------------------------------------------ 1. not measured ≠ NaN/Inf

def test_a_ratio_not_measured_is_said_on_its_row_not_drawn(runs):
    head = runs["head"]
    assert head.summary["grad_ratio_init"] is None  # the premise: null, not measured
    assert head.summary["grad_ratio_final"] is None
    fig = compare_figures.comparison_grad_ratio_figure([runs["deep"], head])
    ax = fig.axes[0]
    points, words = row_artists(ax, row_of(ax, "head"))
    assert points == []  # no ×, no ○, no ●: nothing on the row reads as a value
    assert any("not measured" in w for w in words)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any("NaN/Inf" in t for t in legend)  # no overflow was measured
    points, words = row_artists(ax, row_of(ax, "deep"))
    assert len(points) >= 2 and words == []  # a measured ratio is drawn as before


def test_a_measured_nan_is_still_marked_as_an_overflow(runs):
    nan = with_summary(runs["deep"], name="nan_end", grad_ratio_final=math.nan)
    half = with_summary(runs["deep"], name="half", grad_ratio_init=None)
    fig = compare_figures.comparison_grad_ratio_figure([nan, half, runs["head"]])
    ax = fig.axes[0]
    high = ax.get_xlim()[1]
    points, words = row_artists(ax, row_of(ax, "nan_end"))
    crosses = [x for x in points if x.get_marker() == "x"]
    assert [list(x.get_xdata()) for x in crosses] == [[pytest.approx(high / 3)]]
    assert words == []
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("NaN/Inf" in t and "not measured" not in t for t in legend)
    points, words = row_artists(ax, row_of(ax, "half"))  # the end measured, init not
    assert [x.get_marker() for x in points] == ["o"] and x_of(points[0]) < high / 3
    assert [w for w in words if "at init: not measured" in w]
    assert compare_figures.grad_ratios(runs["head"])[:2] == (None, None)


def x_of(line: Line2D) -> float:
    return float(np.asarray(line.get_xdata(), dtype=float)[0])


# ------------------------------------------------------------------ 2. isolated points are visible

def visible(line: Line2D, i: int) -> bool:
    """Whether point i of a line shows: a segment to a finite neighbour, or a marker."""
    y = np.asarray(line.get_ydata(), dtype=float)
    neighbour = (i > 0 and np.isfinite(y[i - 1])) or (i + 1 < y.size and np.isfinite(y[i + 1]))
    if line.get_linestyle() not in ("None", "none", "") and line.get_linewidth() > 0 and neighbour:
        return True
    if line.get_marker() in (None, "None", "none", "", " "):
        return False
    every = line.get_markevery()
    if every is None:
        return True
    if isinstance(every, int):
        return i % every == 0
    return i in [int(k) for k in every]


def test_a_lone_value_in_a_line_gets_a_marker():
    fig = Figure()
    ax = fig.add_subplot()
    y = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 4.0, np.inf, np.nan, 5.0])
    figures.draw_norms(ax, np.arange(y.size, dtype=float), y, 1e-3, color="C0", label="plain")
    figures.draw_norms(ax, np.arange(y.size, dtype=float), y, 1e-3, color="C1", marker="s",
                       markevery=3, label="sparse markers")
    assert list(np.flatnonzero(figures.isolated(y))) == [0, 5, 8]
    for line in ax.get_lines():
        shown = np.asarray(line.get_ydata(), dtype=float)
        assert all(visible(line, i) for i in np.flatnonzero(np.isfinite(shown))), line.get_label()
    [sparse] = [x for x in ax.get_lines() if x.get_label() == "sparse markers"]
    assert {0, 3, 6} <= set(sparse.get_markevery())  # its own markers are kept


def test_a_diverged_runs_one_update_ratio_per_layer_is_visible(runs):
    boom = runs["boom"]
    steps, names, u, present = figures.layer_grid(boom, "update_ratio")
    logged = present.any(axis=1)
    assert boom.status == "diverged" and int(logged.sum()) == 1  # the premise: one step
    ax = step_figures.update_ratio_figure(boom).axes[0]
    layers = [x for x in ax.get_lines() if x.get_label() in names]
    assert layers
    for line in layers:
        y = np.asarray(line.get_ydata(), dtype=float)
        assert y.size == 1 and np.isfinite(y[0]) and visible(line, 0), line.get_label()
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    [[segment]] = [c.get_segments() for c in bars]  # the range over layers, one step wide
    assert segment[0][0] == segment[1][0] == steps[int(np.argmax(logged))]
    assert segment[0][1] < segment[1][1]


def test_a_lone_step_between_gaps_is_visible_in_the_update_ratio(runs):
    deep = runs["deep"]
    steps = sorted({r["step"] for r in deep.layers if r.get("update_ratio") is not None})
    assert len(steps) >= 4
    keep = {steps[0], steps[2], steps[3]}  # step 0 alone; one layer missing at steps[1]
    rows = [{**r, "update_ratio": r["update_ratio"] if r["step"] in keep or
             (r["step"] == steps[1] and r["layer"] != 0) else None} for r in deep.layers]
    record = dataclasses.replace(deep, layers=rows)
    ax = step_figures.update_ratio_figure(record).axes[0]
    [first] = [x for x in ax.get_lines() if x.get_label() == deep.layers[0]["name"]]
    y = np.asarray(first.get_ydata(), dtype=float)
    assert np.isfinite(y[0]) and not np.isfinite(y[1])  # the premise: a lone first point
    assert all(visible(first, i) for i in np.flatnonzero(np.isfinite(y)))
    assert not any(x.get_marker() == "x" for x in ax.get_lines())  # a gap is no NaN/Inf


# ------------------------------------------------------------------ 3. legends inside the figure

def outside(fig: Figure) -> list[str]:
    """The legend entries of a figure that reach past its edges."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()
            if not box.contains(*t.get_window_extent(renderer).p0)
            or not box.contains(*t.get_window_extent(renderer).p1)]


@pytest.mark.parametrize("name", ["deep", "head", "boom"])
def test_every_legend_entry_of_a_run_figure_is_inside_it(runs, name):
    record = runs[name]
    for figure, draw in run_figures.FIGURES.items():
        assert outside(draw(record)) == [], figure


def test_a_long_layer_name_widens_the_update_ratio_figure(runs):
    deep = runs["deep"]
    long = "encoder.blocks.0.attention.output.dense_projection"
    rows = [{**r, "name": long} if r["layer"] == 0 else r for r in deep.layers]
    fig = step_figures.update_ratio_figure(dataclasses.replace(deep, layers=rows))
    assert outside(fig) == []
    assert fig.get_figwidth() > 10.5
    usual = step_figures.update_ratio_figure(deep)
    assert np.isclose(fig.axes[0].get_position().width * fig.get_figwidth(),
                      usual.axes[0].get_position().width * usual.get_figwidth())


def test_every_legend_entry_of_a_comparison_figure_is_inside_it(runs, tmp_path: Path):
    records = list(runs.values())
    for draw in (compare_figures.comparison_loss_figure,
                 compare_figures.comparison_grad_flow_figure,
                 compare_figures.comparison_grad_ratio_figure):
        assert outside(draw(records)) == [], draw.__name__
    assert [p.name for p in compare_figures.plot_comparison(records, tmp_path)] == [
        "loss.png", "grad_flow.png", "grad_ratio.png"]


# ------------------------------------------------------------------ 4. legends show what is drawn

def legend_texts(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_the_ratio_legend_has_the_diverged_marker_only_when_one_is_drawn(runs):
    calm = compare_figures.comparison_grad_ratio_figure([runs["deep"], runs["head"]])
    assert not [t for t in legend_texts(calm) if "diverged" in t]
    assert "at init" in legend_texts(calm) and "at the end" in legend_texts(calm)
    boom = runs["boom"]
    assert boom.status == "diverged" and math.isfinite(boom.summary["grad_ratio_final"])
    stormy = compare_figures.comparison_grad_ratio_figure([runs["deep"], boom])
    assert "at the end, diverged (last logged step)" in legend_texts(stormy)
    [cross] = [x for x in stormy.axes[0].get_lines() if x.get_marker() == "X"]  # drawn, listed
    alone = compare_figures.comparison_grad_ratio_figure([boom])  # no plain end point drawn
    assert "at the end" not in legend_texts(alone)


# ------------------------------------------------------------------ 5. activations: gap ≠ overflow

def red_crosses(ax) -> list[float]:
    return [float(v) for x in ax.get_lines() if x.get_marker() == "x"
            for v in np.asarray(x.get_xdata(), dtype=float)]


def test_an_activation_not_measured_is_a_gap_and_a_measured_nan_an_overflow(runs):
    deep = runs["deep"]
    last = max(r["step"] for r in deep.layers)
    unmeasured = {"act_mean": None, "act_std": None, "act_q05": None, "act_q50": None,
                  "act_q95": None}
    rows = [{**r, **unmeasured} if r["step"] == last and r["layer"] == 1
            else {**r, "act_mean": math.nan} if r["step"] == last and r["layer"] == 2 else r
            for r in deep.layers]
    fig = run_figures.activations_figure(dataclasses.replace(deep, layers=rows))
    init, end = fig.axes[:2]
    assert red_crosses(end) == [3.0]  # fc3's NaN; fc2, not measured, is no overflow
    assert red_crosses(init) == []
    assert sum("NaN/Inf" in t for t in legend_texts(fig)) == 1
    only_gaps = [{**r, **unmeasured} if r["step"] == last and r["layer"] == 1 else r
                 for r in deep.layers]
    fig = run_figures.activations_figure(dataclasses.replace(deep, layers=only_gaps))
    assert red_crosses(fig.axes[1]) == [] and not any("NaN/Inf" in t for t in legend_texts(fig))


def bars(ax) -> list[tuple[float, float, float]]:
    """(x, low, high) of each bar a band one layer wide is drawn as."""
    return [(float(a[0]), float(min(a[1], b[1])), float(max(a[1], b[1])))
            for c in ax.collections if isinstance(c, LineCollection)
            for a, b in c.get_segments()]


@pytest.mark.parametrize("quantiles", [True, False])
def test_one_hidden_layers_activation_bands_are_visible(runs, quantiles):
    one = runs["one"]
    if not quantiles:  # a record from before the quantiles: mean ±1 and ±2 std
        one = dataclasses.replace(one, layers=[{**r, "act_q05": None, "act_q50": None,
                                                "act_q95": None} for r in one.layers])
    _, names, mean, _ = figures.layer_grid(one, "act_mean")
    _, _, std, _ = figures.layer_grid(one, "act_std")
    assert names == ["fc1", "head"] and np.isfinite(std[0, 0]) and std[0, 0] > 0  # the premise
    fig = run_figures.activations_figure(one)
    for ax in fig.axes[:2]:
        drawn = bars(ax)
        assert len(drawn) == 2, drawn  # outer band and ±1 std, each a bar at layer 1
        assert all(x == 1.0 and low < high for x, low, high in drawn)
    inner = min(bars(fig.axes[0]), key=lambda b: b[2] - b[1])
    assert inner[1:] == pytest.approx((mean[0, 0] - std[0, 0], mean[0, 0] + std[0, 0]))
    assert outside(fig) == []
    # each panel's legend lies beside the one layer's bar and points, not on them
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    for ax in fig.axes:
        box = ax.get_legend().get_window_extent(canvas.get_renderer())
        drawn = [ax.transData.transform((x, y)) for x, low, high in bars(ax) for y in (low, high)]
        drawn += [ax.transData.transform(p) for line in ax.get_lines()
                  for p in line.get_xydata() if p[0] == 1.0 and np.isfinite(p).all()]
        assert drawn and all(x < box.x0 for x, _ in drawn), ax.get_title()


# ------------------------------------------------------------------ 6. grad_norm: gap ≠ overflow

def test_a_total_norm_not_measured_is_a_gap_and_a_measured_nan_is_marked(runs):
    deep = runs["deep"]
    steps = [r["step"] for r in figures.training_rows(deep.metrics)]
    gap, nan = steps[1], steps[3]
    metrics = [{**r, "grad_norm": None} if is_training_row(r) and r["step"] == gap
               else r for r in deep.metrics]
    ax = step_figures.grad_norm_figure(dataclasses.replace(deep, metrics=metrics)).axes[0]
    assert red_crosses(ax) == []
    assert not any("NaN/Inf" in t.get_text() for t in ax.get_legend().get_texts())
    metrics = [{**r, "grad_norm": math.nan} if is_training_row(r) and r["step"] == nan
               else r for r in metrics]
    ax = step_figures.grad_norm_figure(dataclasses.replace(deep, metrics=metrics)).axes[0]
    assert red_crosses(ax) == [float(nan)]
    assert any("NaN/Inf" in t.get_text() for t in ax.get_legend().get_texts())
    none = [{**r, "grad_norm": None} for r in deep.metrics]
    ax = step_figures.grad_norm_figure(dataclasses.replace(deep, metrics=none)).axes[0]
    assert red_crosses(ax) == [] and [t.get_text() for t in ax.texts] == [
        "no gradient norm was logged"]


# ------------------------------------------------------------------ 7. legends sized to their text

def right_gap(fig: Figure) -> float:
    """Inches between the figure's right edge and the furthest legend's."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ends = [ax.get_legend().get_window_extent(canvas.get_renderer()).x1
            for ax in fig.axes if ax.get_legend()]
    return (fig.bbox.x1 - max(ends)) / fig.dpi


@pytest.mark.parametrize("draw", ["comparison_loss_figure", "comparison_grad_flow_figure"])
def test_a_comparison_legend_leaves_no_wide_empty_column(runs, draw):
    make = getattr(compare_figures, draw)
    records = [runs["deep"], runs["head"], runs["boom"]]
    fig = make(records)
    assert outside(fig) == []
    assert 0 < right_gap(fig) < 0.4, right_gap(fig)
    long = with_summary(runs["deep"], name="a_variant_with_a_very_long_name_" * 3)
    wide = make([*records, long])
    assert outside(wide) == [] and 0 < right_gap(wide) < 0.4
    assert wide.get_figwidth() > fig.get_figwidth() + 3  # the legend's text sets the width
    for a, b in zip(fig.axes, wide.axes):  # the axes keep their size in inches
        assert np.isclose(a.get_position().width * fig.get_figwidth(),
                          b.get_position().width * wide.get_figwidth())


# ------------------------------------------------------------------ 8. a single layer's depth

def test_a_head_alone_is_drawn_at_the_output_end_of_the_gradient_flow(runs):
    head = runs["head"]
    assert len(figures.layer_grid(head, "grad_norm")[1]) == 1  # the premise: one layer
    fig = compare_figures.comparison_grad_flow_figure([runs["deep"], head])
    [ax] = fig.axes  # one task
    [single] = [x for x in ax.get_lines() if str(x.get_label()).startswith("head")]
    assert list(np.asarray(single.get_xdata(), dtype=float)) == [1.0]
    assert "one layer" in str(single.get_label())
    [deep] = [x for x in ax.get_lines() if x.get_label() == "deep"]
    x = np.asarray(deep.get_xdata(), dtype=float)
    assert x[0] == 0.0 and x[-1] == 1.0  # a deeper net still spans first to last
    assert ax.get_xlim()[0] < 0 and ax.get_xlim()[1] > 1
    alone = compare_figures.comparison_grad_flow_figure([head]).axes[0]
    assert alone.get_xlim()[0] < 0 < 1 < alone.get_xlim()[1]  # the whole 0..1 axis


def test_log_tick_labels_are_distinct_and_never_read_ten_times_a_power() -> None:
    """A narrow log axis (a loss ratio near 1) labels its ticks apart (1, 1.02, 1.04, not
    "1" three times), and a tick a rounding error below 1 reads "1", not "10×10⁻¹"."""
    import matplotlib.pyplot as plt

    from gradlab.render.figures import log_scale

    fig, ax = plt.subplots()
    log_scale(ax)
    ax.set_ylim(0.98, 1.06)
    formatter = ax.yaxis.get_minor_formatter()
    labels = [t for t in formatter.format_ticks([0.98, 1.0, 1.02, 1.04, 1.06]) if t]
    assert len(labels) == len(set(labels)) and "1.02" in labels
    assert formatter.format_ticks([1 - 1e-12, 1.02]) == ["1", "1.02"]
    # below 1 too, in the same plain decimals (not 9.98×10⁻¹ beside 1.002)
    ax.set_ylim(0.993, 1.006)
    major = ax.yaxis.get_major_formatter()
    assert [t for t in major.format_ticks([0.994, 0.998, 1.0, 1.002]) if t] == [
        "0.994", "0.998", "1", "1.002"]
    ax.set_ylim(200, 1500)  # narrow, but past 1000: powers of ten, never Python's 1e+03
    assert not any("e+" in t for t in major.format_ticks([200, 300, 1000, 1500]))
    ax.set_ylim(1e-3, 1e2)  # a wide view keeps its powers of ten
    assert major.format_ticks([1e-3, 1e-2, 1.0, 1e2]) == ["10⁻³", "10⁻²", "1", "10²"]
    plt.close(fig)


def test_every_panel_label_of_a_comparison_figure_is_inside_it(runs):
    """The left margin is measured from the tick labels and the y label of every panel, also
    where a loss ratio stays within 1 % of the baseline (a narrow log axis)."""
    deep = runs["deep"]
    base = deep.summary["baseline_loss"]
    flat = dataclasses.replace(deep, metrics=[
        {**r, "loss": base * (1 + 0.006 * math.sin(k))} if r.get("loss") is not None else r
        for k, r in enumerate(deep.metrics)])
    for draw, records in ((compare_figures.comparison_loss_figure, [flat]),
                          (compare_figures.comparison_loss_figure, list(runs.values())),
                          (compare_figures.comparison_grad_flow_figure, list(runs.values()))):
        fig = draw(records)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        for ax in fig.axes:
            for t in [*ax.get_yticklabels(), ax.yaxis.label]:
                if t.get_text():
                    assert t.get_window_extent(renderer).x0 >= 0, (draw.__name__, t.get_text())


def test_a_long_variant_name_fits_the_ratio_chart(runs):
    """The names are measured, not estimated from their length: 60 of the widest letter fit."""
    wide = "W" * 60
    record = dataclasses.replace(runs["deep"], summary={**runs["deep"].summary, "name": wide},
                                 config={**runs["deep"].config, "name": wide})
    fig = compare_figures.comparison_grad_ratio_figure([runs["boom"], record])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    [label] = [t for t in fig.axes[0].get_yticklabels() if t.get_text() == wide]
    assert label.get_window_extent(canvas.get_renderer()).x0 >= 0
    usual = compare_figures.comparison_grad_ratio_figure([runs["boom"], runs["deep"]])
    assert np.isclose(fig.axes[0].get_position().width * fig.get_figwidth(),  # the axes' size
                      usual.axes[0].get_position().width * usual.get_figwidth())
    assert fig.get_figwidth() > usual.get_figwidth()


def test_a_long_run_name_shrinks_the_title_to_fit_the_figure(runs, tmp_path: Path):
    long = "a_run_with_a_rather_long_descriptive_name_x"
    record = dataclasses.replace(runs["deep"], summary={**runs["deep"].summary, "name": long})
    fig = step_figures.grad_norm_figure(record)
    figures.save(fig, tmp_path / "grad_norm.png")  # measured and fitted as it is saved
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig.axes[0].title.get_window_extent(canvas.get_renderer())
    assert fig.axes[0].get_title().startswith(long)
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width
    # a figure's own title too (the activations' and gradient entries' suptitles)
    for draw in (run_figures.activations_figure, step_figures.grad_distributions_figure):
        fig = draw(record)
        figures.save(fig, tmp_path / "f.png")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        for text in fig.texts:
            box = text.get_window_extent(canvas.get_renderer())
            assert 0 <= box.x0 and box.x1 <= fig.bbox.width, (draw.__name__, text.get_text())


def test_an_evaluation_row_between_the_logged_ones_makes_no_cliff_in_the_smoothed_loss():
    """Rows every 20 steps and an evaluation's at 99, 199, …: a moving average over points
    jumped by a whole point's worth between steps 99 and 100; over steps it follows the
    trend (a straight line stays itself, away from the ends)."""
    from gradlab.render.figures import smooth

    steps = np.array(sorted(set(range(0, 1000, 20)) | {99, 199, 299, 399, 499, 599}), float)
    loss = 1 - steps / 1000
    smoothed = smooth(loss, 9, steps)
    inner = (steps > 100) & (steps < 880)
    assert np.abs(smoothed - loss)[inner].max() < 0.005
    at = {s: v for s, v in zip(steps, smoothed)}
    assert abs((at[299] - at[300]) - 0.001) < 0.001  # the line's own step, not a cliff
