"""The report of a group record (one config over several seeds), from its group.json: which
seeds, how each ended, and the summary's numbers per seed with their mean, 95% interval, min
and max. Each seed's own report is `gradlab report GROUP/seed-N`. No torch.

The table is fitted to the width (`style.fit_table`): the per-seed columns go first when the
width is short, then min and max; the mean and its interval always stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from gradlab.render.style import Column, Fitted, fit_table, short, status_style

# The fields shown first, in this order (each where the group has it); then every other field.
LEADING = ("final_loss", "final_metrics.test_accuracy", "final_metrics.test_loss",
           "final_metrics.train_loss", "baseline_loss", "baseline_accuracy", "grad_ratio_init",
           "grad_ratio_final", "delta_ratio_init", "delta_ratio_final", "grad_norm_min_init",
           "grad_norm_min_final", "time_grad_ratio_init", "time_grad_ratio_final",
           "weight_norm_final", "clip_fraction", "steps_done", "seconds")
HIDDEN = ("steps_planned", "n_params", "initial_metrics.train_loss")  # the same for every seed


def shown_fields(fields: dict[str, Any], every: bool = False) -> list[str]:
    """The fields of the table: the leading ones present, then (with `every`) all the rest."""
    lead = [k for k in LEADING if k in fields]
    rest = sorted(k for k in fields if k not in lead and k not in HIDDEN) if every else []
    return lead + rest


def group_report(path: Path, group: dict[str, Any], every: bool = False) -> RenderableType:
    seeds = [int(s) for s in group.get("seeds") or []]
    statuses = group.get("statuses") or {}
    head = Text()
    head.append(f"{group.get('name')}", style="bold")
    head.append(f"  over seeds {', '.join(map(str, seeds))}: ")
    head.append(str(group.get("status")), style=status_style(str(group.get("status"))))
    if group.get("status") == "mixed":
        head.append("  (" + ", ".join(f"seed {s} {statuses.get(str(s))}" for s in seeds) + ")")
    verdicts = group.get("verdicts") or {}
    firsts = [(verdicts.get(str(s)) or ["–"])[0] for s in seeds]
    head.append("\nverdict per seed: " + ", ".join(f"{s} {k}" for s, k in zip(seeds, firsts)))
    fields = group.get("fields") or {}
    keys = shown_fields(fields, every)

    def cell(x: Any) -> str:
        return short(x, 3) if isinstance(x, (int, float)) else "–"

    def name(k: str) -> str:
        return k + (" (geo)" if fields[k].get("scale") == "log" else "")

    # a field some seeds lack (a diverged seed has no final loss) is over fewer seeds
    partial = any(fields[k].get("n", len(seeds)) < len(seeds) for k in keys)
    columns = [
        Column("field", [name(k) for k in keys], "left"),
        *([Column("seeds", [f"{fields[k].get('n', 0)}/{len(seeds)}" for k in keys])]
          if partial else []),
        Column("mean", [cell(fields[k].get("mean")) for k in keys]),
        Column("95% interval", [_interval(fields[k]) for k in keys]),
        Column("min", [cell(fields[k].get("min")) for k in keys], drop=1),
        Column("max", [cell(fields[k].get("max")) for k in keys], drop=1),
    ]
    for i, s in enumerate(seeds):
        columns.append(Column(f"seed {s}", [cell((fields[k].get("values") or [])[i]
                                                 if i < len(fields[k].get("values") or [])
                                                 else None) for k in keys], drop=2))

    def build(width: int) -> RenderableType:
        table = fit_table(columns, width)
        assert table is not None
        note = Text("95% interval: of the mean, Student's t over the seeds (– from one seed); "
                    "(geo): geometric mean and interval, on a log scale"
                    + ("; seeds: how many have the field" if partial else "") + "\n"
                    f"each seed's report:\n  gradlab report {path}/seed-N", style="dim")
        return Group(head, table, note)

    return Fitted(build)


def _interval(stats: dict[str, Any]) -> str:
    lo, hi = stats.get("ci95") or (None, None)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return "–"
    return f"{short(lo, 3)} … {short(hi, 3)}"
