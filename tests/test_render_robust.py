"""Every report, table and figure renders for the records a user can end up with: one logged
value, huge values, all-NaN columns, zero steps, no layer rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from gradlab.record.files import clean
from gradlab.record.reader import LAYER_COLUMNS, METRIC_COLUMNS, read_record
from gradlab.render.chart import chart
from gradlab.render.report import run_report
from gradlab.render.run_figures import plot_run


def write_run(path: Path, metrics: list[dict], layers: list[dict], summary: dict | None) -> Path:
    path.mkdir(parents=True)
    for name, columns, rows in (("metrics.csv", METRIC_COLUMNS, metrics),
                                ("layers.csv", LAYER_COLUMNS, layers)):
        lines = [",".join(columns)] + [",".join(repr(r.get(c, "")) if isinstance(r.get(c), float)
                                                else str(r.get(c, "")) for c in columns)
                                       for r in rows]
        (path / name).write_text("\n".join(lines) + "\n")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(clean(summary)))
    return path


def layer_rows(step: int, value: float, n: int = 3) -> list[dict]:
    return [{"step": step, "phase": "train", "layer": i, "name": f"fc{i + 1}", "grad_norm": value,
             "grad_rms": value, "grad_absmax": value, "weight_norm": value,
             "update_ratio": value, "delta_norm": value, "act_mean": value, "act_std": value}
            for i in range(n)]


SUMMARY = {"name": "r", "status": "diverged", "steps_done": 0, "steps_planned": 10,
           "first_nonfinite": {"step": 0, "layer": None, "what": "loss", "direction": "forward"},
           "verdicts": [{"kind": "diverged", "severity": "error", "when": "init", "layers": [],
                         "message": "the loss became NaN/Inf at step 0", "remedies": [],
                         "fixes": []}]}

CASES = {
    "one_logged_value": ([{"step": 0, "phase": "train", "loss": 2.0, "grad_norm": 1.0}],
                         layer_rows(0, 1.0), SUMMARY),
    "huge_values": ([{"step": s, "phase": "train", "loss": 1e300, "grad_norm": 1e300}
                     for s in range(3)], layer_rows(0, 1e300) + layer_rows(2, 1e-300), SUMMARY),
    "all_nan": ([{"step": s, "phase": "train", "loss": math.nan, "grad_norm": math.nan}
                 for s in range(2)], layer_rows(0, math.nan) + layer_rows(1, math.inf), SUMMARY),
    "zero_steps": ([], [], {**SUMMARY, "status": "interrupted", "first_nonfinite": None}),
    "no_summary": ([{"step": 0, "phase": "train", "loss": 1.0, "grad_norm": 1.0}], [], None),
}


def case_run(case: str, tmp_path: Path) -> Path:
    metrics, layers, summary = CASES[case]
    return write_run(tmp_path / "r" / "20250101T000000Z", metrics, layers, summary)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("width", [80, 120])
def test_every_report_renders_within_the_terminal(case: str, width: int, tmp_path: Path) -> None:
    record = read_record(case_run(case, tmp_path))
    console = Console(width=width, record=True)
    console.print(run_report(record))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow warning reaches the user
def test_every_figure_renders(case: str, tmp_path: Path) -> None:
    """Once per record: a figure's size does not depend on the terminal's."""
    drawn = plot_run(case_run(case, tmp_path))
    assert drawn and all(p.read_bytes().startswith(b"\x89PNG") for p in drawn)


def test_the_text_chart_takes_one_point_and_extreme_values() -> None:
    for series in ({"train": [(0, 1.0)]}, {"train": [(0, 1e300), (1, 1e-300)]},
                   {"train": [(0, 0.0), (5, 0.0)]}, {"train": [(3, -1.0), (3, 1.0)]}):
        assert "step" in chart(series).plain
