"""`gradlab runs`: every run under a directory, newest first, as one table; a run whose files
are not what gradlab wrote is listed as `corrupt`, with the file and what is wrong. No torch."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from gradlab.record.reader import find_runs, listing_record, run_started
from gradlab.render.report import logged_progress
from gradlab.render.style import num, status_style


def run_list(root: Path) -> RenderableType:
    """Every run under `root`, newest first: name, status, date, steps, final loss, verdicts."""
    paths = sorted(find_runs(root), key=run_started, reverse=True)
    if not paths:
        return Text(f"no runs under {root}", style="yellow")
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, collapse_padding=True,
                  title=f"runs under {root}, newest first", title_justify="left",
                  caption=f"gradlab report {root}/RUN re-prints one", caption_justify="left")
    for col, justify in (("run", "left"), ("status", "left"),
                         ("started (UTC)", "left"), ("steps", "right"), ("final loss", "right"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "verdict")  # type: ignore[arg-type]
    for path in paths:
        record = listing_record(path)
        s = record.summary or {}
        status = record.status
        style = status_style(status)
        if status == "corrupt":  # a file that is not what gradlab wrote: say which, and what
            steps, loss = "–", None
            verdicts = record.problem or ""
        elif status in ("incomplete", "running"):  # what it logged before it stopped (or so far)
            done, _, loss = logged_progress(record)
            steps = f"{done}" + (f"/{s['steps_planned']}" if s.get("steps_planned") else "")
        else:
            steps = f"{s.get('steps_done', '?')}/{s.get('steps_planned', '?')}"
            loss = s.get("final_loss")
        if status != "corrupt":
            verdicts = ", ".join(v["kind"] for v in s.get("verdicts") or []) or "–"
        run = path.name if path == root else path.relative_to(root).as_posix()
        table.add_row(run, Text(status, style), run_started(path)[0].strftime("%Y-%m-%d %H:%M"),
                      steps, num(loss), verdicts)
    return table

