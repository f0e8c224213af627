"""The table `gradlab fix` prints: each remedy as the `--set` line that applies it, ranked by
what the net learned with it, beside the config as given. Takes the fix record's rows; no torch.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlab.render.style import num, short, status_style


def fix_table(rows: list[dict[str, Any]], original: dict[str, Any], config: str) -> RenderableType:
    """Ranked remedies (a remedy's overrides wrap in their column; no number is ever cut)."""
    metric = original.get("metric") or (rows[0]["metric"] if rows else "test_loss")
    label = "test\nacc" if metric == "test_accuracy" else "test\nloss"
    # padding shared between neighbouring cells: six columns of which one holds whole --set
    # tokens (never cut) fit in 80 columns with the verdict names whole
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=(0, 1), show_edge=False,
                  collapse_padding=True, pad_edge=False,
                  title="remedies, best first", title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    width = max([len(x) for r in rows for x in r["overrides"].split()] + [16])
    table.add_column("remedy (--set …)", min_width=width, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column(label, justify="right", no_wrap=True)
    table.add_column("ratio\nend", justify="right", no_wrap=True)
    table.add_column("verdict\nafter", overflow="fold", max_width=14)
    for r in [*rows, original]:
        beats = r.get("beats_baseline")
        value = Text(_metric(r["test_metric"], metric),
                     style="green" if beats else ("red" if beats is False else ""))
        remedy = "\n".join(r["overrides"].split()) if r["rank"] else r["overrides"]
        table.add_row(str(r["rank"] or "–"), remedy,
                      Text(r["status"], style=status_style(r["status"])), value,
                      short(r["grad_ratio_final"]), "\n".join((r["verdict"] or "–").split(", ")))
    notes = Text(f"baseline (a predictor that ignores the inputs): "
                 f"{_metric(original.get('baseline'), metric)}; green: beats it\n", style="dim")
    if not rows:
        notes.append("the verdicts name no remedy for this config: nothing to fix\n",
                     style="yellow")
    elif best_command(rows, config) is None:
        notes.append("no remedy beat the baseline in this budget\n", style="yellow")
    return Group(table, notes)


def best_command(rows: list[dict[str, Any]], config: str,
                 overrides: Sequence[str] = ()) -> str | None:
    """`gradlab run CONFIG --set …` for the best remedy that beat the baseline, if any: the
    options the fix was given (`overrides`, as `--set`) then the remedy's, so that it runs what
    was ranked (one line, shell-quoted, to be printed without wrapping so it can be copied)."""
    best = next((r for r in rows if r.get("beats_baseline")), None)
    if best is None:
        return None
    sets = [*overrides, *best["overrides"].split()]
    return " ".join(["gradlab", "run", shlex.quote(config),
                     *(f"--set {shlex.quote(s)}" for s in sets)])


def _metric(x: Any, metric: str) -> str:
    if metric == "test_accuracy" and isinstance(x, (int, float)):
        return f"{100 * x:.1f}%"
    return num(x)
