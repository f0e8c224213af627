"""compare_figures.py: variants are grouped by task (one panel each), each loss is drawn
relative to its own baseline, a diverging curve is capped with a marker, no two variants of a
panel look alike, and the gradient-ratio chart has one row per variant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from matplotlib.colors import to_hex

from gradlab.config import config_from_dict
from gradlab.record.reader import read_record
from gradlab.render import compare_figures
from gradlab.render.figures import smooth
from gradlab.runner import run_config


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs")
    paths = [
        run_config(tiny_config(name="reg"), out).path,
        run_config(tiny_config(name="boom", model={"depth": 8, "activation": "relu",
                                                   "init": "kaiming_normal"},
                               train={"lr": 1.0, "steps": 30, "optimizer": "sgd",
                                      "eval_every": 30}, probe={"every": 10}), out).path,
        run_config(config_from_dict({
            "name": "digits", "seed": 0, "device": "cpu", "data": {"kind": "digits"},
            "model": {"depth": 2, "width": 16}, "train": {"steps": 8, "batch_size": 32},
            "probe": {"every": 2}}, "digits.yaml"), out).path,
    ]
    return [read_record(p) for p in paths]


def test_variants_are_grouped_by_task(records):
    groups = compare_figures.task_groups(records)
    assert groups == {"teacher (regression)": [0, 1], "digits (classification)": [2]}
    fig = compare_figures.comparison_loss_figure(records)
    assert [ax.get_title(loc="left") for ax in fig.axes] == list(groups)


def test_each_loss_is_drawn_relative_to_its_own_baseline(records):
    fig = compare_figures.comparison_loss_figure(records)
    for ax, index in ((fig.axes[0], 0), (fig.axes[1], 2)):
        record = records[index]
        [line] = [x for x in ax.get_lines() if x.get_label() == compare_figures.variant_labels(
            records)[index]]
        loss = np.array([m["loss"] for m in record.metrics if m.get("loss") is not None])
        raw = loss / record.summary["baseline_loss"]
        window = max(1, (raw.size // 6) | 1)
        assert np.allclose(line.get_ydata(), smooth(raw, window) if window > 1 else raw)
        [one] = [x for x in ax.get_lines() if list(x.get_ydata()) == [1.0, 1.0]]
        assert one.get_linestyle() == ":"


def test_a_diverged_curve_is_capped_and_marked(records):
    fig = compare_figures.comparison_loss_figure(records)
    ax = fig.axes[0]
    boom = records[1]
    where = boom.summary["first_nonfinite"]["step"]
    [curve] = [x for x in ax.get_lines() if x.get_label() == "boom (diverged)"]
    assert max(curve.get_ydata()) <= compare_figures.CAP  # the axis is not pushed to 1e22
    loss = [m["loss"] for m in boom.metrics if m.get("loss") is not None]
    assert max(loss) / boom.summary["baseline_loss"] > compare_figures.CAP  # the premise
    crosses = [x for x in ax.get_lines() if x.get_marker() == "X"]
    assert [(c.get_xdata()[0], c.get_ydata()[0]) for c in crosses] == [
        (where, compare_figures.CAP)]
    assert ax.get_ylim()[1] < 100


def test_variants_in_a_panel_differ_in_colour_and_style():
    for n in (2, 10, 20, 25):
        styles = [compare_figures.variant_style(i, n) for i in range(n)]
        looks = {(to_hex(s["color"]), s["ls"], s["marker"]) for s in styles}
        assert len(looks) == n
        assert len({to_hex(s["color"]) for s in styles}) == min(n, 20)


def test_the_gradient_ratio_chart_has_a_row_per_variant(records, tmp_path: Path):
    fig = compare_figures.comparison_grad_ratio_figure(records)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["reg", "boom (diverged)", "digits"]
    assert ax.get_xscale() == "log"
    drawn = compare_figures.plot_comparison(records, tmp_path)
    assert [p.name for p in drawn] == ["loss.png", "grad_flow.png", "grad_ratio.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in drawn)


def test_a_past_the_cap_marker_is_never_hidden_under_a_diverged_cross(records):
    """The ▲ where a curve passes CAP is drawn, and in the legend, only where it is not under
    that run's × (a run that diverges right after its loss blew up shows the × alone)."""
    boom = records[1]
    where = boom.summary["first_nonfinite"]["step"]
    x, y, _ = compare_figures.relative_loss(boom)
    past = float(x[np.argmax(y > compare_figures.CAP)])

    def triangles(ax):
        marks = [(m.get_xdata()[0], m.get_ydata()[0]) for m in ax.get_lines()
                 if m.get_marker() == "^"]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        return marks, any(t.startswith("went past") for t in legend)

    ax = compare_figures.comparison_loss_figure(records).axes[0]
    low, high = ax.get_xlim()
    near = abs(past - where) < 0.02 * (high - low)
    assert triangles(ax) == (([], False) if near else ([(past, compare_figures.CAP)], True))
    # the same run made to diverge far later than it blew up: both markers, both in the legend
    late = replace(boom, summary={**boom.summary, "first_nonfinite": {
        **boom.summary["first_nonfinite"], "step": past + 0.5 * (high - low)}})
    ax = compare_figures.comparison_loss_figure([records[0], late]).axes[0]
    assert triangles(ax) == ([(past, compare_figures.CAP)], True)
    # and a run whose cross sits on its ▲ shows the cross alone
    on = replace(boom, summary={**boom.summary, "first_nonfinite": {
        **boom.summary["first_nonfinite"], "step": past}})
    ax = compare_figures.comparison_loss_figure([records[0], on]).axes[0]
    assert triangles(ax) == ([], False)
    assert [(c.get_xdata()[0], c.get_ydata()[0]) for c in ax.get_lines()
            if c.get_marker() == "X"] == [(past, compare_figures.CAP)]
