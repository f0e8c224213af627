"""plots.py: every figure of a completed, diverged, interrupted and killed run is a valid PNG,
the figures mark what they claim (underflow, divergence), comparisons stay readable for 20
variants, and reading a record never imports torch or the trainer."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import tiny_config
from matplotlib.colors import to_hex

from gradlab.record.reader import Record, read_record
from gradlab.render import compare_figures, figures, run_figures
from gradlab.runner import run_config
from gradlab.train.events import StepEnd

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = ["loss.png", "grad_norm.png", "grad_flow.png", "grad_band.png", "grad_heatmap.png",
               "grad_distributions.png", "update_ratio.png", "activations.png"]


class StopAt:
    """An observer that presses Ctrl-C after a given step."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, event: StepEnd) -> None:
        if event.step >= self.step:
            raise KeyboardInterrupt

    def on_phase_start(self, phase: str) -> None:
        pass

    def on_eval_end(self, event: object) -> None:
        pass

    def on_log(self, event: object) -> None:
        pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One record of each kind a user meets: completed, diverged, interrupted, killed."""
    out = tmp_path_factory.mktemp("runs")
    made = {
        "completed": run_config(tiny_config(), out).path,
        "diverged": run_config(tiny_config(name="boom", model={"init": {"scheme": "normal",
                                                                        "std": 5.0}},
                                           train={"lr": 50.0}), out).path,
        "interrupted": run_config(tiny_config(name="stopped"), out, (StopAt(4),)).path,
        # 50 sigmoid layers with denormals flushed: the first layers' gradients are exactly 0
        "vanishing": run_config(tiny_config(name="deep", model={"depth": 50,
                                                                "activation": "sigmoid"},
                                            train={"steps": 4}, flush_denormal=True),
                                out).path,
    }
    killed = out / "killed" / "20250101T000000Z"
    shutil.copytree(made["completed"], killed)
    (killed / "summary.json").unlink()  # what a run killed with SIGKILL leaves behind
    made["killed"] = killed
    return made


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400, path
    assert pixels.std() > 0.01, f"{path} is blank"


# completed and diverged runs draw every figure in test_figures_runs.py too
@pytest.mark.parametrize("kind", ["interrupted", "killed"])
def test_every_run_figure_is_a_valid_png(runs, kind):
    record = read_record(runs[kind])
    assert record.status == {"killed": "incomplete"}.get(kind, kind)
    drawn = run_figures.plot_run(runs[kind])
    assert [p.name for p in drawn] == RUN_FIGURES
    for path in drawn:
        assert path.parent == runs[kind] / "plots"
        assert_png(path)
    assert not list((runs[kind] / "plots").glob(".*.tmp"))  # written atomically


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()] + [
        t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_titles_say_how_the_run_ended(runs):
    for kind, status in (("diverged", "diverged"), ("interrupted", "interrupted"),
                         ("killed", "incomplete")):
        fig = run_figures.grad_flow_figure(read_record(runs[kind]))
        assert f"[{status}" in fig.axes[0].get_title()
    stopped = legend_texts(run_figures.loss_figure(read_record(runs["interrupted"])))
    assert "interrupted (Ctrl-C) after 5 steps" in stopped
    killed = legend_texts(run_figures.loss_figure(read_record(runs["killed"])))
    assert any(t.startswith("record ends at step") and "killed?" in t for t in killed)


def test_underflowed_gradients_are_drawn_not_dropped(runs):
    record = read_record(runs["vanishing"])
    steps, _, g, _ = figures.layer_grid(record, "grad_norm")
    assert (g[0] == 0).any() and g[0, -1] > 0  # the premise: exact zeros at the input end
    fig = run_figures.grad_flow_figure(record)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any("exactly 0" in t for t in legend_texts(fig))
    init = next(line for line in ax.get_lines() if line.get_label() == "step 0 (init)")
    y = np.asarray(init.get_ydata(), dtype=float)
    zero = g[0] == 0
    # an exact 0 is a ▽ on the floor in the line's colour, never a point of the line itself
    assert np.isnan(y[zero]).all() and (y[~zero] > 0).all()
    marks = [m for m in ax.get_lines() if m.get_marker() == "v"
             and m.get_markeredgecolor() == init.get_color()]
    assert len(marks) == 1
    x = np.asarray(marks[0].get_xdata(), dtype=float)
    assert list(x) == list(np.asarray(init.get_xdata(), dtype=float)[zero])
    floor = float(marks[0].get_ydata()[0])
    assert 0 < floor < np.nanmin(y)  # below every value drawn, visible on the log axis
    finite = y[~zero]
    assert finite[0] < finite[-1] / 1e3  # vanishing shows as a slope towards the input
    bar_label = run_figures.grad_heatmap_figure(record).axes[-1].get_ylabel()
    assert "black: exactly 0" in bar_label


def test_divergence_is_marked_where_it_happened(runs):
    record = read_record(runs["diverged"])
    where = record.summary["first_nonfinite"]
    loss = run_figures.loss_figure(record)
    assert any(t.startswith(f"diverged at step {where['step']}") for t in legend_texts(loss))
    heat = run_figures.grad_heatmap_figure(record).axes[0]
    [line] = [x for x in heat.get_lines() if x.get_label().startswith("diverged")]
    assert line.get_xdata()[0] == where["step"]
    assert heat.get_xlim()[1] > where["step"]  # visible even past the last logged step


def test_a_record_with_no_rows_still_draws_every_figure(tmp_path):
    empty = Record(tmp_path, None, {}, [], [])  # killed before its first logged step
    for draw in (run_figures.loss_figure, run_figures.grad_flow_figure, run_figures.grad_heatmap_figure,
                 run_figures.activations_figure):
        figures.save(draw(empty), tmp_path / "x.png")
        assert_png(tmp_path / "x.png")


def test_comparison_of_20_variants_keeps_a_legend_inside_the_figure(runs, tmp_path):
    records = [read_record(runs[k]) for k in ("completed", "diverged", "interrupted",
                                               "vanishing")] * 5
    labels = compare_figures.variant_labels(records)
    assert len(set(labels)) == 20 and "boom (diverged)" in labels
    for make in (compare_figures.comparison_loss_figure, compare_figures.comparison_grad_flow_figure):
        fig = make(records)
        fig.draw_without_rendering()  # lays the figure out, as saving it does
        [ax] = fig.axes  # one task: one panel
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert all(label in texts for label in labels)
        box = legend.get_window_extent()
        assert box.x0 >= 0 and box.y0 >= 0
        assert box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1  # nothing cut off
        styles = {(to_hex(h.get_color()), h.get_linestyle(), h.get_marker())
                  for h in legend.legend_handles[:20]}
        assert len(styles) == 20  # no two variants drawn alike
        assert len({s[0] for s in styles}) == 20  # and no colour used twice


def test_reading_a_record_imports_neither_torch_nor_the_trainer():
    code = ("import sys, gradlab.render.report, gradlab.render.run_figures, "
            "gradlab.render.compare_figures, gradlab.record.reader; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') "
            "or m.startswith(('gradlab.train', 'gradlab.build')) or m == 'gradlab.runner'); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
