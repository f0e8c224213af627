"""run_figures.py on the runs a teacher shows: a diverged run keeps the steps before its
divergence and draws them with the divergence marked; every loss plot has its baseline, test
loss from before training and a smoothed train loss; the clip threshold and clipped steps are
marked; activations are drawn on the activation's whole range; NaN/Inf never crash a figure;
and every kind of run (completed, diverged, clipped, recurrent, pretrained) writes every figure.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import tiny_config
from matplotlib.lines import Line2D

from gradlab.config import config_from_dict
from gradlab.record.files import clean
from gradlab.record.reader import LAYER_COLUMNS, METRIC_COLUMNS, read_record
from gradlab.render import figures, run_figures, step_figures
from gradlab.runner import run_config

# A ReLU net whose SGD steps overshoot: it diverges at step 4, between two logged steps (0 and
# 10; the buffer holds the steps since the last logged one, so no evaluation in between).
DIVERGING = {"name": "boom", "model": {"depth": 8, "activation": "relu",
                                       "init": "kaiming_normal"},
             "train": {"lr": 1.0, "steps": 30, "optimizer": "sgd", "eval_every": 30},
             "probe": {"every": 10}}
ALWAYS = ["loss.png", "grad_norm.png", "grad_flow.png", "grad_band.png", "grad_heatmap.png",
          "grad_distributions.png", "update_ratio.png"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {
        "completed": run_config(tiny_config(model={"activation": "sigmoid"}), out).path,
        "diverged": run_config(tiny_config(**DIVERGING), out).path,
        "clipped": run_config(tiny_config(name="clipped", model={"depth": 8, "activation": "relu",
                                                                 "init": "kaiming_normal"},
                                          train={"lr": 1.0, "steps": 12,
                                                 "clip": {"by": "norm", "max_norm": 0.5}}),
                              out).path,
        "recurrent": run_config(config_from_dict({
            "name": "rnn", "seed": 0, "device": "cpu",
            "data": {"kind": "adding", "n_samples": 64, "length": 8},
            "model": {"kind": "rnn", "depth": 1, "width": 8},
            "train": {"steps": 6, "batch_size": 16, "optimizer": "adam", "lr": 0.01,
                      "eval_every": 3}, "probe": {"every": 2}}, "rnn.yaml"), out).path,
        # a classifier (chance line) pretrained layer by layer (its own phases in the record)
        "pretrained": run_config(config_from_dict({
            "name": "pre", "seed": 0, "device": "cpu", "data": {"kind": "digits"},
            "model": {"depth": 3, "width": 16, "activation": "sigmoid"},
            "train": {"steps": 6, "batch_size": 32, "eval_every": 3}, "probe": {"every": 2},
            "pretrain": {"steps_per_layer": 4, "batch_size": 32}}, "pre.yaml"), out).path,
    }


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def lines(ax) -> list[Line2D]:
    return list(ax.get_lines())


def labelled(ax, start: str) -> list[Line2D]:
    return [x for x in ax.get_lines() if str(x.get_label()).startswith(start)]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# ------------------------------------------------------------------ the diverged run's record

def test_a_diverged_run_logs_every_step_before_the_divergence(runs):
    record = read_record(runs["diverged"])
    where = record.summary["first_nonfinite"]["step"]
    assert record.status == "diverged" and 1 < where < 10  # the premise: between two probes
    metrics = csv_rows(runs["diverged"] / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == list(range(where + 1))
    assert all(math.isfinite(float(r["loss"])) for r in metrics[:-1])
    assert not math.isfinite(float(metrics[-1]["loss"]) * float(metrics[-1]["grad_norm"]))
    layers = csv_rows(runs["diverged"] / "layers.csv")
    n = len({r["layer"] for r in layers})
    assert sorted({int(r["step"]) for r in layers}) == list(range(where))
    between = [r for r in layers if int(r["step"]) > 0]
    assert len(between) == n * (where - 1)
    # the steps in between have each layer's gradient norm (the parts of the total norm) ...
    assert all(float(r["grad_norm"]) > 0 and float(r["grad_rms"]) > 0 for r in between)
    # ... and nothing the probe did not measure there
    assert all(r["weight_norm"] == "" and r["act_std"] == "" for r in between)
    # so the summary's end is the last step before the divergence, not a copy of init
    summary = record.summary
    assert summary["layers"][0]["final"]["grad_norm"] != summary["layers"][0]["init"]["grad_norm"]


def test_the_layer_norms_before_a_divergence_add_up_to_the_total_norm(runs):
    """The per-layer norms written for unprobed steps are the parts of metrics.csv's total:
    the squares of the weights' norms are at most the total's square (biases make the rest)."""
    metrics = {int(r["step"]): float(r["grad_norm"])
               for r in csv_rows(runs["diverged"] / "metrics.csv")}
    by_step: dict[int, float] = {}
    for r in csv_rows(runs["diverged"] / "layers.csv"):
        by_step[int(r["step"])] = by_step.get(int(r["step"]), 0.0) + float(r["grad_norm"]) ** 2
    for step, squares in by_step.items():
        assert math.sqrt(squares) <= metrics[step] * (1 + 1e-5)
        assert math.sqrt(squares) > 0.5 * metrics[step]  # weights dominate the gradient


def test_a_run_that_does_not_diverge_logs_only_its_planned_steps(runs):
    cfg = tiny_config(model={"activation": "sigmoid"})
    steps, every, eval_every = cfg.train.steps, cfg.probe.every, cfg.train.eval_every
    planned = sorted({s for s in range(steps) if s % every == 0 or s == steps - 1}
                     | {s for s in range(steps) if (s + 1) % eval_every == 0})
    logged = [int(r["step"]) for r in csv_rows(runs["completed"] / "metrics.csv")]
    assert logged == planned


# ------------------------------------------------------------------ loss.png

def test_the_loss_of_a_diverged_run_is_a_curve_up_to_a_marker_at_the_divergence(runs):
    record = read_record(runs["diverged"])
    where = record.summary["first_nonfinite"]["step"]
    fig = run_figures.loss_figure(record)
    ax = fig.axes[0]
    [train] = labelled(ax, "train loss")
    assert list(train.get_xdata()) == list(range(where))
    [marker] = labelled(ax, f"diverged at step {where}")
    assert list(marker.get_xdata()) == [where] and marker.get_marker() == "X"
    assert ax.get_xlim()[1] > where


def test_every_loss_plot_has_its_baseline_and_the_test_loss_before_training(runs):
    for kind in ("completed", "diverged", "clipped", "recurrent"):
        record = read_record(runs[kind])
        baseline = record.summary["baseline_loss"]
        ax = run_figures.loss_figure(record).axes[0]
        [line] = labelled(ax, "baseline")
        assert list(line.get_ydata()) == [baseline, baseline], kind
        [test] = labelled(ax, "test loss")
        assert test.get_xdata()[0] == 0
        assert test.get_ydata()[0] == record.summary["initial_metrics"]["test_loss"]


def test_a_classifier_has_its_chance_line_and_accuracy_before_training(runs):
    record = read_record(runs["pretrained"])
    chance = record.summary["baseline_accuracy"]
    assert 0 < chance < 0.5
    fig = run_figures.loss_figure(record)
    [line] = labelled(fig.axes[1], "chance")
    assert list(line.get_ydata()) == [chance, chance]
    [accuracy] = labelled(fig.axes[1], "test accuracy")
    assert accuracy.get_ydata()[0] == record.summary["initial_metrics"]["test_accuracy"]


def test_a_long_noisy_loss_is_drawn_raw_and_smoothed(tmp_path):
    rng = np.random.default_rng(0)
    loss = 1.0 + rng.normal(0, 0.3, 40)
    path = write_run(tmp_path / "r" / "20250101T000000Z",
                     [{"step": 10 * s, "phase": "train", "loss": float(v), "grad_norm": 1.0}
                      for s, v in enumerate(loss)], [], {"name": "r", "status": "completed",
                                                         "baseline_loss": 1.0})
    ax = run_figures.loss_figure(read_record(path)).axes[0]
    [raw] = labelled(ax, "train loss (minibatch), raw")
    [smoothed] = labelled(ax, "train loss, smoothed")
    assert np.allclose(raw.get_ydata(), loss)
    assert np.std(smoothed.get_ydata()) < 0.5 * np.std(loss)  # the trend, not the noise
    assert raw.get_alpha() < 1 and smoothed.get_linewidth() > raw.get_linewidth()


def test_smoothing_keeps_a_constant_and_follows_a_trend():
    assert np.allclose(figures.smooth(np.full(9, 2.0), 5), 2.0)
    y = np.arange(20, dtype=float)
    assert np.allclose(figures.smooth(y, 5)[2:-2], y[2:-2])


# ------------------------------------------------------------------ grad_norm.png

def test_the_gradient_norm_shows_the_clip_threshold_and_the_clipped_steps(runs):
    record = read_record(runs["clipped"])
    rows = [r for r in csv_rows(runs["clipped"] / "metrics.csv")]
    flagged = [int(r["step"]) for r in rows if r["clipped"] == "1"]
    assert flagged  # the premise: clipping fired on logged steps
    ax = run_figures.grad_norm_figure(record).axes[0]
    [threshold] = labelled(ax, "clip threshold max_norm = 0.5")
    assert list(threshold.get_ydata()) == [0.5, 0.5]
    [marks] = labelled(ax, "clipped (")
    assert [int(x) for x in marks.get_xdata()] == flagged
    [after] = labelled(ax, "after clipping")
    assert np.nanmax(after.get_ydata()) <= 0.5 * (1 + 1e-6)
    assert ax.get_yscale() == "log"


def test_the_gradient_norm_of_a_diverged_run_rises_to_the_divergence(runs):
    record = read_record(runs["diverged"])
    where = record.summary["first_nonfinite"]["step"]
    ax = run_figures.grad_norm_figure(record).axes[0]
    [norm] = labelled(ax, "total norm")
    y = np.asarray(norm.get_ydata(), dtype=float)
    assert np.isfinite(y[:where]).all() and y[where - 1] > y[0]
    assert labelled(ax, f"diverged at step {where}")


# ------------------------------------------------------------------ update_ratio, grad_band, distributions

def test_the_update_ratio_has_the_rule_of_thumb_line(runs):
    record = read_record(runs["completed"])
    ax = run_figures.update_ratio_figure(record).axes[0]
    [guide] = labelled(ax, "≈1e-3")
    assert list(guide.get_ydata()) == [1e-3, 1e-3]
    _, names, u, present = figures.layer_grid(record, "update_ratio")
    u = u[present.any(axis=1)]
    [first] = labelled(ax, names[0])
    y = np.asarray(first.get_ydata(), dtype=float)
    ok = np.isfinite(u[:, 0]) & (u[:, 0] > 0)
    assert ok.any() and np.allclose(y[ok], u[ok, 0])
    assert ax.get_yscale() == "log"


def test_the_gradient_band_spans_rms_to_max_at_init(runs):
    record = read_record(runs["completed"])
    _, _, rms, _ = figures.layer_grid(record, "grad_rms")
    _, _, top, _ = figures.layer_grid(record, "grad_absmax")
    ax = run_figures.grad_band_figure(record).axes[0]
    [low] = labelled(ax, "rms |g| (typical entry), step 0")
    [high] = labelled(ax, "max |g|, step 0")
    assert np.allclose(low.get_ydata(), rms[0]) and np.allclose(high.get_ydata(), top[0])
    assert (top[0] >= rms[0]).all()


def test_gradient_distributions_draw_one_panel_per_chosen_layer(runs):
    record = read_record(runs["completed"])
    fig = run_figures.grad_distributions_figure(record)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    _, names, _, _ = figures.layer_grid(record, "grad_rms")
    assert [ax.get_title().split(": ")[1] for ax in visible] == [
        names[i] for i in figures.pick(len(names), step_figures.LAYER_LINES)]
    assert all(ax.collections for ax in visible)  # each has its band


# ------------------------------------------------------------------ activations.png

def test_sigmoid_activations_are_drawn_on_their_whole_range_with_the_slope(runs):
    record = read_record(runs["completed"])
    fig = run_figures.activations_figure(record)
    left, middle, right = fig.axes[:3]
    assert left.get_ylim()[0] <= 0 and left.get_ylim()[1] >= 1  # [0, 1], never auto-zoomed
    assert middle.get_ylim() == left.get_ylim()
    steps, _, mean, _ = figures.layer_grid(record, "act_mean")
    _, _, std, _ = figures.layer_grid(record, "act_std")
    [init] = labelled(right, "init")
    m, s = mean[0, :-1], std[0, :-1]  # the head has no activation
    assert np.allclose(init.get_ydata(), m - (s ** 2 + m ** 2))  # E[h(1-h)]
    assert (np.asarray(init.get_ydata()) <= 0.25).all()
    assert labelled(right, "largest possible: 0.25")


# ------------------------------------------------------------------ every kind of run

@pytest.mark.parametrize("kind", ["completed", "diverged", "clipped", "recurrent", "pretrained"])
def test_every_kind_of_run_writes_every_figure(runs, kind):
    drawn = [p.name for p in run_figures.plot_run(runs[kind])]
    assert drawn[:len(ALWAYS)] == ALWAYS
    if kind == "recurrent":
        assert "time_grads.png" in drawn and "activations.png" not in drawn
    else:
        assert drawn[-1] == "activations.png"
    for name in drawn:
        pixels = matplotlib.image.imread(runs[kind] / "plots" / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400, name
        assert pixels.std() > 0.01, f"{name} is blank"
    assert not list((runs[kind] / "plots").glob(".*.tmp"))  # written atomically
    # a pretrained run's step 0 is fine-tuning's first, not the random init
    labels = [x.get_label() for x in
              run_figures.grad_flow_figure(read_record(runs[kind])).axes[0].get_lines()]
    start = "step 0 (after pretraining)" if kind == "pretrained" else "step 0 (init)"
    assert start in labels


# ------------------------------------------------------------------ NaN/Inf never crash

def write_run(path: Path, metrics: list[dict], layers: list[dict], summary: dict | None) -> Path:
    path.mkdir(parents=True)
    for name, columns, rows in (("metrics.csv", METRIC_COLUMNS, metrics),
                                ("layers.csv", LAYER_COLUMNS, layers)):
        with (path / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(clean(summary)))
    (path / "config.yaml").write_text("model: {activation: sigmoid}\n"
                                      "train: {clip: {by: norm, max_norm: 1.0}}\n")
    return path


BAD = [math.nan, math.inf, -math.inf, 0.0, 1e300, 1e-300]


def test_non_finite_values_in_every_column_never_crash_a_figure(tmp_path):
    metrics = [{"step": s, "phase": "train", "loss": v, "grad_norm": v, "grad_norm_clipped": v,
                "clipped": 1, "test_loss": v, "test_accuracy": v} for s, v in enumerate(BAD)]
    layers = [{"step": s, "phase": "train", "layer": i, "name": f"fc{i + 1}",
               **{c: BAD[(s + i) % len(BAD)] for c in LAYER_COLUMNS[4:]}}
              for s in range(len(BAD)) for i in range(3)]
    summary = {"name": "r", "status": "diverged", "baseline_loss": math.inf,
               "baseline_accuracy": math.nan,
               "initial_metrics": {"test_loss": math.nan, "test_accuracy": math.inf},
               "first_nonfinite": {"step": 3, "layer": "fc2", "what": "gradient"}}
    path = write_run(tmp_path / "r" / "20250101T000000Z", metrics, layers, summary)
    record = read_record(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing printed at the user either
        assert len(run_figures.plot_run(path)) == len(run_figures.FIGURES)
    for name, draw in run_figures.FIGURES.items():
        with np.errstate(over="ignore"):  # as plot_run draws them
            fig = draw(record)
            figures.save(fig, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    with np.errstate(over="ignore"):
        ax = run_figures.grad_norm_figure(record).axes[0]
    assert any("NaN/Inf" in t for t in legend_texts(ax))  # marked, not dropped
