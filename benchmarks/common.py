"""What the benchmark scripts share: a result row, the table they print, the machine they ran on.

Each script returns a list of `Row`s from `measure(quick)`; run alone it prints them with
`print_table`, and `run_all.py` prints every script's rows as one table.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

# The models the overhead benchmarks train (`overhead.py`, `api_overhead.py`, `checkouts.py`):
# each a config's data, model and train sections. Plain data, importing nothing of gradlab, so
# `checkouts.py` can train them with another checkout's code.
TEACHER = {"kind": "teacher", "n_samples": 2048, "n_features": 100}
HE = {"init": "kaiming_normal", "bias_init": "zeros"}
MODELS: dict[str, dict[str, Any]] = {
    "sigmoid 50×100": {"data": TEACHER,
                       "model": {"depth": 50, "width": 100, "activation": "sigmoid"},
                       "train": {"optimizer": "sgd", "lr": 0.1}},
    "relu+He 50×100": {"data": TEACHER,
                       "model": {"depth": 50, "width": 100, "activation": "relu", **HE},
                       "train": {"optimizer": "sgd", "lr": 0.01}},
    "residual+BN 50×100": {"data": TEACHER,
                           "model": {"depth": 50, "width": 100, "activation": "relu",
                                     "residual": True, "norm": "batch", **HE},
                           "train": {"optimizer": "sgd", "lr": 0.01}},
    "LSTM adding T=50": {"data": {"kind": "adding", "n_samples": 2048, "length": 50},
                         "model": {"kind": "lstm", "depth": 1, "width": 64},
                         "train": {"optimizer": "adam", "lr": 0.001}},
}


@dataclass
class Row:
    """One measured figure: what it is, its value as shown, and the target it is held to."""

    benchmark: str
    case: str
    value: str
    target: str = ""
    met: bool | None = None  # None: no target
    note: str = ""


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """The range of repeated measurements, e.g. '0.98–1.04', to show how noisy they were."""
    return f"{min(values):.2f}–{max(values):.2f}"


def ratio_row(benchmark: str, case: str, ratios: Sequence[float], limit: float | None,
              note: str = "", at_least: bool = False) -> Row:
    """A ratio row: the median of `ratios` (and their range), held to ≤ or ≥ `limit`."""
    r = median(ratios)
    value = f"{r:.3f}× ({spread(ratios)})" if len(ratios) > 1 else f"{r:.3f}×"
    if limit is None:
        return Row(benchmark, case, value, note=note)
    met = r >= limit if at_least else r <= limit
    return Row(benchmark, case, value, f"{'≥' if at_least else '≤'} {limit:g}×", met, note)


def machine() -> str:
    """The CPU, core count and load the figures were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} cores, load average at the end {load}"


def print_table(rows: list[Row], title: str) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", header_style="bold")
    for col, justify in (("benchmark", "left"), ("case", "left"), ("measured", "right"),
                         ("target", "right"), ("met", "left"), ("note", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        table.add_row(r.benchmark, r.case, r.value, r.target, met, r.note)
    console = Console(width=140)
    console.print(table)
    console.print(f"measured on: {machine()}\nratios: median over interleaved repetitions (range "
                  "in brackets); a load average above the core count means the figures were "
                  "measured under contention", highlight=False)
