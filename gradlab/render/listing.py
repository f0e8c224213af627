"""`gradlab runs`: every run under a directory, newest first, as one table; a run whose files
are not what gradlab wrote is listed as `corrupt`, with the file and what is wrong. No torch.

The table is laid out for the width it is printed at (`style.fit_table`): the verdicts wrap
between words; when the width is short the start time, which the run's directory name already
spells (`YYYYmmddTHHMMSSZ`, UTC), is the column that goes first, and then each run's path is
stacked, its name over its stamp. A run's path is never shortened: `gradlab report` takes it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.text import Text

from gradlab.record.group import is_group_dir, read_group, top_verdicts
from gradlab.record.reader import find_runs, listing_record, run_started
from gradlab.record.validate import CorruptRecord
from gradlab.render.report import logged_progress
from gradlab.render.style import Column, Fitted, fit_table, short, status_style


def _group_entry(path: Path) -> tuple[str, str, float | None, str]:
    """A group's status, `N seeds`, mean final loss and its seeds' top verdicts (`kind 3/3`)."""
    try:
        group = read_group(path)
    except CorruptRecord as e:
        return "corrupt", "–", None, e.short
    seeds = group.get("seeds") or []
    loss = ((group.get("fields") or {}).get("final_loss") or {}).get("mean")
    verdict = top_verdicts(group, counted=True)
    return (str(group.get("status")), f"{len(seeds)} seeds ({' '.join(map(str, seeds))})",
            loss, verdict or "–")


def run_list(root: Path) -> RenderableType:
    """Every run under `root`, newest first: name, status, date, steps, final loss, verdicts."""
    paths = sorted(find_runs(root), key=run_started, reverse=True)
    if not paths:
        return Text(f"no runs under {root}", style="yellow")
    runs, statuses, started, steps_done, losses, verdicts = [], [], [], [], [], []
    for path in paths:
        record = listing_record(path)
        s = record.summary or {}
        status = record.status
        if is_group_dir(path):  # one entry for a group: its seeds, the mean loss, the verdicts
            status, steps, loss, verdict = _group_entry(path)
        elif status == "corrupt":  # a file that is not what gradlab wrote: say which, and what
            steps, loss = "–", None
            verdict = record.problem or ""
        elif status in ("incomplete", "running"):  # what it logged before it stopped (or so far)
            done, _, loss = logged_progress(record)
            steps = f"{done}" + (f"/{s['steps_planned']}" if s.get("steps_planned") else "")
        else:
            steps = f"{s.get('steps_done', '?')}/{s.get('steps_planned', '?')}"
            loss = s.get("final_loss")
        if status != "corrupt" and not is_group_dir(path):
            verdict = ", ".join(v["kind"] for v in s.get("verdicts") or []) or "–"
            if s.get("overrides"):  # made with --set: the report header lists them
                verdict = f"[--set ×{len(s['overrides'])}] {verdict}"
        runs.append(path.name if path == root else path.relative_to(root).as_posix())
        statuses.append(Text(status, status_style(status)))
        started.append(run_started(path)[0].strftime("%Y-%m-%d %H:%M"))
        steps_done.append(steps)
        losses.append(short(loss, 3))
        verdicts.append(verdict)
    def columns(run: list[str]) -> list[Column]:
        return [
            Column("run", run, "left"),
            Column("status", statuses, "left"),
            Column("started (UTC)", started, "left", drop=1),
            Column("steps", steps_done),
            Column("final\nloss", losses),
            Column("verdict", verdicts, "left", wrap=True),
        ]

    def build(width: int) -> RenderableType:
        table = fit_table(columns(runs), width, shorten=False)
        if table is None:  # each run over two lines: its name, then its stamp
            stacked = [r.replace("/", "/\n", 1) if r.count("/") == 1 else r for r in runs]
            table = fit_table([c for c in columns(stacked) if c.header != "started (UTC)"], width)
        assert table is not None
        notes = f"gradlab report {root} re-prints it" if runs == [root.name] \
            else f"gradlab report {root}/RUN re-prints one"  # the root is itself a run
        if len(table.columns) < 6:
            notes = f"a run's directory name is the time it started (UTC)\n{notes}"
        return Group(Text(f"runs under {root}, newest first"), table, Text(notes, style="dim"))

    return Fitted(build)
