"""The comparison table, in the terminal and as comparison.md: one row per variant, numbers
never cut, names never made alike, each row's problems below it; in the terminal, laid out for
the width it is printed at (`style.fit_table`). Takes the rows `compare.comparison_rows` makes (or
comparison.csv read back); no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gradlab.record.comparison import read_comparison
from gradlab.render.style import Column, Fitted, fit_table, num, short, status_style


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """comparison.md: the table in Markdown, then each variant's problems."""
    lines = []
    head = ("variant", "status", "steps", "final loss", "test metric", "grad ratio init",
            "grad ratio end", "weakest grad", "verdict", "steps/s", "expect")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["variant"], r["status"], num(r["steps"]),
                 _spread(r["final_loss"], r.get("final_loss_ci")).replace("\n", " "),
                 _spread(r["test_metric"], r.get("test_metric_ci"),
                         bool(r.get("overlaps"))).replace("\n", " "),
                 num(r["grad_ratio_init"], 2),
                 num(r["grad_ratio_final"], 2), num(r["weakest_grad"], 2), r["verdict"],
                 num(r["steps_per_second"]), r["expect"] or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    problems = [f"- **{r['variant']}**: {r['problems']}" for r in rows if r["problems"]]
    return "\n".join(lines) + "\n" + ("\nProblems:\n\n" + "\n".join(problems) + "\n"
                                       if problems else "")


def comparison_table(rows: list[dict[str, Any]], show_claims: bool = False) -> RenderableType:
    """The side-by-side table, with each row's problems below; laid out for the width it is
    printed at. `show_claims`: a column saying whether each config's `expect:` block held (the
    caller asked for the claims to be checked).

    Where every column does not fit, the status column goes first (a run that did not complete
    shows its status in the verdict column instead), then steps/s, then the names are shortened
    in the middle, kept distinct. Numbers are never cut."""
    return Fitted(lambda width: _comparison(rows, show_claims, width))


def _comparison(rows: list[dict[str, Any]], show_claims: bool, width: int) -> RenderableType:
    statuses = [Text(r["status"], status_style(r["status"])) for r in rows]
    merged = [_outcome(r) for r in rows]

    def columns(status: bool, rate_drops: bool) -> list[Column]:
        cols = [Column("variant", [r["variant"] for r in rows], "left", name=True)]
        if status:
            cols.append(Column("status", statuses, "left"))
        cols += [
            Column("steps", [num(r["steps"]) for r in rows]),
            Column("final\nloss", [_spread(r["final_loss"], r.get("final_loss_ci"))
                                    for r in rows]),
            Column("test", [_spread(r["test_metric"], r.get("test_metric_ci"),
                                    bool(r.get("overlaps"))) for r in rows]),
            Column("ratio\ninit", [short(r["grad_ratio_init"]) for r in rows]),
            Column("ratio\nend", [short(r["grad_ratio_final"]) for r in rows]),
            Column("min\n|grad|", [short(r["weakest_grad"]) for r in rows]),
            Column("verdict", [Text((r["verdict"] or "–").replace(", ", "\n")) for r in rows]
                   if status else merged, "left"),
            Column("steps\n/s", [_rate(r["steps_per_second"]) for r in rows],
                   drop=1 if rate_drops else 0),
        ]
        if show_claims:
            cols.append(Column("claims", [_claims(r["expect"]) for r in rows], "left"))
        return cols

    # the names whole, every column; then the status folded into the verdict; then without
    # steps/s; last, the names shortened
    table = (fit_table(columns(True, False), width, shorten=False)
             or fit_table(columns(False, True), width, air_first=False))
    assert table is not None
    shown = {str(c.header) for c in table.columns}
    legend = ["ratio: first layer's gradient norm / last layer's, at init and at the end",
              "min |grad|: the weakest layer's gradient norm at the end",
              "test: accuracy for classification, loss otherwise"]
    if any(r.get("seeds") for r in rows):
        legend.append("a config run over several seeds: the mean, ± half its 95% interval; "
                      "≈ where that interval overlaps its paired partner's (or, outside a "
                      "pair, another variant's of the same task)")
    if "status" not in shown:
        legend.append("verdict: the run's first verdict (a group's: each seed's, with how many "
                      "seeds have it where they differ), or its status if it did not complete")
    if show_claims:
        legend.append("claims: whether the config's expect: block held")
    # the legend sits below the table rather than in its caption, which wraps at the table's width
    notes = Text("\n".join(legend) + "\n", style="dim")
    for r in rows:
        if r["problems"]:
            notes.append(f"{r['variant']}: ", style="bold")
            notes.append(f"{r['problems']}\n")
    return Group(Text("comparison", style="italic"), table, notes)


def pairs_table(rows: list[dict[str, Any]]) -> RenderableType | None:
    """Each remedy against its problem (a `versus:` claim's partner): the final loss, the test
    metric and the gradient ratio at init of the problem → the remedy (means over the seeds),
    and whether the paired claims held. None when no config states a paired claim."""
    named = {r["variant"]: r for r in rows}
    pairs, held = [], []
    for r in rows:  # one line per partner of each paired claim
        verdicts = (r.get("paired") or "").split()
        for i, name in enumerate((r.get("partner") or "").split()):
            if name in named:
                pairs.append((r, named[name]))
                held.append(verdicts[i] if i < len(verdicts) else "")
    if not pairs:
        return None

    def arrow(key: str, digits: int = 2) -> list[str]:
        return [f"{short(p[key], digits)} → {short(r[key], digits)}" for r, p in pairs]

    columns = [
        Column("remedy", [r["variant"] for r, _ in pairs], "left", name=True),
        Column("problem", [p["variant"] for _, p in pairs], "left", name=True),
        Column("final loss", arrow("final_loss")),
        Column("test", arrow("test_metric"), drop=1),
        Column("ratio init", arrow("grad_ratio_init", 2)),
        Column("paired", [_claims(h) for h in held], "left"),
    ]

    def build(width: int) -> RenderableType:
        table = fit_table(columns, width)
        assert table is not None
        seeds = next((r["seeds"] for r, _ in pairs if r.get("seeds")), "")
        over = f"means over seeds {seeds.replace(' ', ', ')}" if seeds else "one seed each"
        return Group(Text(f"pairs: the problem → its remedy ({over})", style="italic"), table)

    return Fitted(build)


def _spread(value: float | None, half: float | None, overlaps: bool = False) -> str:
    """A run's number, or a group's mean with ± half its 95% interval below it."""
    if half is None:
        return short(value)
    return f"{short(value)}\n±{short(half, 1)}" + (" ≈" if overlaps else "")


def _outcome(row: dict[str, Any]) -> Text:
    """The verdict of a completed run; the status (in its colour) of any other, with its
    verdict below when that says something else."""
    status, verdict = row["status"], (row["verdict"] or "").replace(", ", "\n")
    if status == "completed":
        return Text(verdict or "–")
    text = Text(status, status_style(status))
    if verdict and verdict != status:
        text.append(f"\n{verdict}")
    return text


def _claims(expect: str) -> Text:
    return {"held": Text("held", "green"), "FAILED": Text("FAILED", "bold red")}.get(
        expect, Text("–", "dim"))


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def render_comparison_dir(path: Path, show_claims: bool = False) -> RenderableType:
    """Re-render a compare record's table from its comparison.csv (no training); the caller
    prints the record's path, unwrapped, below it."""
    rows = read_comparison(path)
    pairs = pairs_table(rows)
    table = comparison_table(rows, show_claims)
    return table if pairs is None else Group(table, pairs)

