"""The comparison table, in the terminal and as comparison.md: one row per variant, numbers
never cut, each row's problems below it. Takes the rows `compare.comparison_rows` makes (or
comparison.csv read back); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradlab.record.comparison import read_comparison
from gradlab.render.style import num, short, status_style


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """comparison.md: the table in Markdown, then each variant's problems."""
    lines = []
    head = ("variant", "status", "steps", "final loss", "test metric", "grad ratio init",
            "grad ratio end", "weakest grad", "verdict", "steps/s", "expect")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["variant"], r["status"], num(r["steps"]), num(r["final_loss"]),
                 num(r["test_metric"]), num(r["grad_ratio_init"], 2),
                 num(r["grad_ratio_final"], 2), num(r["weakest_grad"], 2), r["verdict"],
                 num(r["steps_per_second"]), r["expect"] or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    problems = [f"- **{r['variant']}**: {r['problems']}" for r in rows if r["problems"]]
    return "\n".join(lines) + "\n" + ("\nProblems:\n\n" + "\n".join(problems) + "\n"
                                       if problems else "")


def comparison_table(rows: list[dict[str, Any]]) -> RenderableType:
    """The side-by-side table, readable at 100 columns, with each row's problems below."""
    # SIMPLE_HEAD already puts a space between columns: no padding, so 11 columns fit in 100
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", padding=0, show_edge=False,
                  title="comparison", title_justify="left")
    for col, justify in (("variant", "left"), ("status", "left"), ("steps", "right"),
                         ("final\nloss", "right"), ("test", "right"), ("ratio\ninit", "right"),
                         ("ratio\nend", "right"), ("min\n|grad|", "right"),
                         ("verdict", "left"), ("steps\n/s", "right"), ("claims", "left")):
        # when a row is too wide, only the names shrink (with an ellipsis), never a number
        shrinks = col in ("variant", "verdict")
        table.add_column(col, justify=justify, no_wrap=not shrinks,  # type: ignore[arg-type]
                         overflow="ellipsis")
    for r in rows:
        status = r["status"]
        style = status_style(status)
        expect = {"held": Text("held", "green"), "FAILED": Text("FAILED", "bold red")}.get(
            r["expect"], Text("–", "dim"))
        table.add_row(
            r["variant"], Text(status, style), num(r["steps"]), short(r["final_loss"]),
            short(r["test_metric"]), short(r["grad_ratio_init"]),
            short(r["grad_ratio_final"]), short(r["weakest_grad"]), r["verdict"],
            _rate(r["steps_per_second"]), expect,
        )
    # the legend sits below the table rather than in its caption, which wraps at the table's width
    notes = Text("ratio: first layer's gradient norm / last layer's; min |grad|: the weakest "
                 "layer's at the end;\ntest: accuracy for classification, loss otherwise; "
                 "claims: the config's expect: block\n", style="dim")
    for r in rows:
        if r["problems"]:
            notes.append(f"{r['variant']}: ", style="bold")
            notes.append(f"{r['problems']}\n")
    return Group(table, notes)




def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def render_comparison_dir(path: Path) -> RenderableType:
    """Re-render a compare record's table from its comparison.csv (no training)."""
    return Group(comparison_table(read_comparison(path)), Text(str(path), style="dim"))

