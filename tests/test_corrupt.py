"""Corrupt and huge records: readers check what they read and stay small and quick.

A file that is not what gradlab wrote is reported as "corrupt: <file>: <what>" (exit 2 from
`report`; `runs` lists the run as corrupt; `compare --reuse` never reuses it). A 100 MB
layers.csv is reported in a few seconds and a bounded amount of memory, and `--reuse`
reads summary.json only.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny, tiny_config
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.record import bounded
from gradlab.record.bounded import MOST_ROWS, iter_rows, number, read_rows
from gradlab.record.reader import edge_steps, read_record
from gradlab.record.validate import CorruptRecord


def cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One completed tiny run, copied afresh for each test that spoils it."""
    from gradlab.runner import run_config

    out = tmp_path_factory.mktemp("template")
    return run_config(tiny_config(), out / "runs").path


@pytest.fixture
def run_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / "tiny" / "20250101T000000Z"
    shutil.copytree(template, target)
    return target


def assert_corrupt(result: Any, file: Path, what: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"corrupt: {file}: " in result.output and what in result.output, result.output


SUMMARIES = [  # (summary.json's bytes, what the message says)
    (b"", "empty file"),
    (b'{"name": "tiny", "status": "compl', "not valid JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00garbage", "not UTF-8 text"),
    (b"[1, 2, 3]", "expected a JSON object, got list"),
    (b'"completed"', "expected a JSON object, got str"),
    (b'{"status": "completed", "steps_done": "many"}', "steps_done: expected a whole number"),
    (b'{"status": "finished"}', "status: expected one of running, completed"),
    (b'{"status": "completed", "layers": {"fc1": 1}}', "layers: expected a list"),
    (b'{"status": "completed", "verdicts": [{"kind": "ok", "message": 3}]}',
     "verdicts: 0: message: expected text"),
    (b'{"status": "completed", "final_metrics": {"test_loss": "low"}}',
     "final_metrics: test_loss: expected a number"),
    (b'{"name": "tiny"}', "no status field"),
]


@pytest.mark.parametrize("content, what", SUMMARIES)
def test_a_corrupt_summary_is_reported_as_corrupt_not_as_killed(run_dir: Path, content: bytes,
                                                                 what: str) -> None:
    (run_dir / "summary.json").write_bytes(content)
    result = cli("report", run_dir, "--no-plots")
    assert_corrupt(result, run_dir / "summary.json", what)
    assert "stopped without finishing" not in result.output
    listed = cli("runs", run_dir.parent.parent)
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    line = next(row for row in listed.stdout.splitlines() if "tiny/20250101T000000Z" in row)
    assert " corrupt " in line and "summary.json" in line and what.split(":")[0] in line


@pytest.mark.parametrize("name", ["metrics.csv", "layers.csv"])
@pytest.mark.parametrize("content, what", [
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "not UTF-8 text"),
    (b"step,phase,loss\r\n0,train,1.0\r\n\x00\x00\x00\r\n", "binary data (NUL bytes)"),
    (b"oops\r\n1,2\r\n", "the header has no step column"),
    (b"step,phase,loss\r\n0,train,1.0,7,8\r\n1,train,0.5\r\n", "line 2: 5 fields, the header has 3"),
    (b"step,phase,loss\r\nzero,train,1.0\r\n1,train,0.5\r\n", "step 'zero' is not a whole number"),
])
def test_a_binary_or_garbled_csv_is_corrupt(run_dir: Path, name: str, content: bytes,
                                            what: str) -> None:
    (run_dir / name).write_bytes(content)
    assert_corrupt(cli("report", run_dir, "--no-plots"), run_dir / name, what)


def test_a_killed_runs_cut_last_line_is_not_corrupt(run_dir: Path) -> None:
    text = (run_dir / "layers.csv").read_text()
    (run_dir / "layers.csv").write_text(text + "12,train,0,fc1,0.1")  # no line end: cut short
    (run_dir / "summary.json").unlink()
    result = cli("report", run_dir, "--no-plots")
    assert result.exit_code == 0 and "incomplete" in result.output, result.output
    assert [r["step"] for r in iter_rows(run_dir / "layers.csv")][-1] != 12


@pytest.mark.parametrize("content, what", [
    (b"- just\n- a list\n", "expected a mapping of keys, got list"),
    (b"\x00\x01\x02\xff\xfe binary", "not UTF-8 text"),
    (b"model: [unclosed\n", "not YAML"),
    (b"name: tiny\nmodel: 5\n", "model: expected a mapping"),
])
def test_a_config_yaml_that_is_not_a_mapping_is_corrupt(run_dir: Path, content: bytes,
                                                        what: str) -> None:
    (run_dir / "config.yaml").write_bytes(content)
    assert_corrupt(cli("report", run_dir, "--no-plots"), run_dir / "config.yaml", what)


def test_the_listing_shows_a_corrupt_run_among_good_ones_and_never_crashes(run_dir: Path) -> None:
    good = run_dir.with_name("20250101T000001Z")
    shutil.copytree(run_dir, good)
    killed = run_dir.with_name("20250101T000002Z")
    shutil.copytree(run_dir, killed)
    (killed / "summary.json").unlink()
    (killed / "metrics.csv").write_bytes(b"\xff\xfe\x00\x00")  # read for a killed run: corrupt
    (run_dir / "summary.json").write_text("[]")
    listed = cli("runs", run_dir.parent.parent)
    assert listed.exit_code == 0, listed.output
    status = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()
              if line.startswith(" tiny/") or line.startswith("tiny/")}
    assert status == {"tiny/20250101T000000Z": "corrupt", "tiny/20250101T000001Z": "completed",
                      "tiny/20250101T000002Z": "corrupt"}


@pytest.mark.parametrize("content, what", [
    (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    (b"variant,status\nx,completed\n", "the header has no steps, final_loss"),
    (None, "line 2: final_loss: not a number: 'lots'"),
    (None, "line 3: not as many fields as the header"),
])
def test_a_garbled_comparison_csv_is_corrupt(tmp_path: Path, run_dir: Path, content: bytes | None,
                                             what: str) -> None:
    from gradlab.compare import Variant, comparison_rows, write_record

    rows = comparison_rows([Variant(Path("tiny.yaml"), config=tiny_config(), run_dir=run_dir,
                                    record=read_record(run_dir))] * 2)
    record = write_record(rows, tmp_path / "out")
    file = record / "comparison.csv"
    if content is None:
        lines = file.read_text().splitlines(keepends=True)
        if "lots" in what:
            header = lines[0].split(",")
            cells = lines[1].split(",")
            cells[header.index("final_loss")] = "lots"
            lines[1] = ",".join(cells)
        else:
            lines[2] = lines[2].split(",", 3)[0] + "\n"
        content = "".join(lines).encode()
    file.write_bytes(content)
    assert_corrupt(cli("report", record, "--no-plots"), file, what)


def test_compare_reuse_skips_a_corrupt_run_and_reads_summaries_only(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """A reusable run whose CSVs are garbage is still reused (only its summary is read); one
    whose summary is corrupt is run again, without a traceback."""
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("a", "b"):
        (configs / f"{name}.yaml").write_text(yaml.safe_dump(tiny(name=name)))
    out = tmp_path / "runs"
    first = cli("compare", configs, "--out", out, "--no-plots", "-q")
    assert first.exit_code == 0, first.output
    [a_dir] = list((out / "a").iterdir())
    [b_dir] = list((out / "b").iterdir())
    for name in ("layers.csv", "metrics.csv", "config.yaml"):
        (a_dir / name).write_bytes(b"\x00\xff garbage that no reader could take")
    (b_dir / "summary.json").write_text('{"status": "completed", "config_hash": 5}')
    again = cli("compare", configs, "--out", out, "--no-plots", "-q", "--reuse")
    assert again.exit_code == 0 and "Traceback" not in again.output, again.output
    [record] = sorted(out.glob("compare-*"))[-1:]
    rows = {r.split(",")[0]: r for r in (record / "comparison.csv").read_text().splitlines()[1:]}
    assert ",yes," in rows["a"] and ",yes," not in rows["b"]
    assert len(list((out / "b").iterdir())) == 2  # b ran again


# ---------------------------------------------------------------- huge records


def make_huge(run_dir: Path, steps: int) -> int:
    """Grow a run's layers.csv and metrics.csv by logging more steps, to `steps` logged steps
    in all; the number of the step after the last one logged."""
    layers = [r for r in iter_rows(run_dir / "layers.csv")]
    last = max(r["step"] for r in layers)
    logged = len({r["step"] for r in layers})
    template = [r for r in layers if r["step"] == last]
    columns = list(template[0])
    metric_columns = next(iter(read_rows(run_dir / "metrics.csv")))
    per_step = "".join(",".join("{step}" if c == "step" else repr(r[c]) if isinstance(r[c], float)
                                else "" if r[c] is None else str(r[c]) for c in columns) + "\r\n"
                       for r in template)
    metrics_line = ",".join("{step}" if c == "step" else "train" if c == "phase" else
                            "0.5" if c in ("loss", "lr", "grad_norm") else
                            "0" if c == "clipped" else "" for c in metric_columns) + "\r\n"
    step, end = last + 1, last + 1 + steps - logged
    with (run_dir / "layers.csv").open("a", newline="") as lf, \
            (run_dir / "metrics.csv").open("a", newline="") as mf:
        while step < end:
            chunk = range(step, min(step + 2000, end))
            lf.write("".join(per_step.format(step=s) for s in chunk))
            mf.write("".join(metrics_line.format(step=s) for s in chunk))
            step = chunk.stop
    return step


# Logged steps of the huge record: 30 000 rows of metrics.csv and 150 000 of layers.csv (30 MB),
# more than read_record keeps of a CSV (MOST_ROWS), and more than the 25 000 rows asserted below.
HUGE_STEPS = 30_000


@pytest.fixture(scope="module")
def huge(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("huge") / "tiny" / "20250101T000000Z"
    shutil.copytree(template, run_dir)
    make_huge(run_dir, HUGE_STEPS)
    return run_dir


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Bytes read from each file opened for reading with `Path.open` (as the readers open
    them), counted as the OS hands them over, below any buffering."""
    counts: Counter[str] = Counter()
    real_open = Path.open

    class Counting(io.FileIO):
        def readinto(self, buffer: Any) -> int | None:
            n = super().readinto(buffer)
            counts[str(self.name)] += n or 0
            return n

        def readall(self) -> bytes:
            data = super().readall()
            counts[str(self.name)] += len(data)
            return data

    def counting_open(self: Path, mode: str = "r", buffering: int = -1,
                      encoding: str | None = None, errors: str | None = None,
                      newline: str | None = None) -> Any:
        if set(mode) - {"r", "b", "t"}:
            return real_open(self, mode, buffering, encoding, errors, newline)
        buffered = io.BufferedReader(Counting(os.fspath(self), "r"))
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding, errors=errors, newline=newline)

    monkeypatch.setattr(Path, "open", counting_open)
    return counts


@pytest.fixture
def cells_parsed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """CSV cells turned into values (`bounded.number`, which every row read goes through)."""
    counts: Counter[str] = Counter()
    real_number = bounded.number

    def counting_number(text: str) -> Any:
        counts["cells"] += 1
        return real_number(text)

    monkeypatch.setattr(bounded, "number", counting_number)
    return counts


def header_of(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader([f.readline()]))


@pytest.mark.xdist_group("huge_record")  # one worker runs the shared fixture once
def test_report_of_a_huge_record_is_quick_and_small(huge: Path, tmp_path: Path,
                                                    cells_parsed: Counter[str]) -> None:
    """The report parses about MOST_ROWS rows of each CSV, however many the record holds, so its
    cost does not grow with the record (the CPU time is printed, not asserted)."""
    run_dir = tmp_path / "tiny" / "20250101T000000Z"  # never read before in this process
    shutil.copytree(huge, run_dir)
    started = time.process_time()
    result = cli("report", run_dir)
    cpu = time.process_time() - started
    assert result.exit_code == 0, result.output
    assert "completed" in result.output and "plots:" in result.output
    layer_cells = len(header_of(run_dir / "layers.csv"))
    metric_cells = len(header_of(run_dir / "metrics.csv"))
    # at most MOST_ROWS rows of layers.csv and of each lane of metrics.csv (evaluated or not),
    # and the last two logged steps
    most = (MOST_ROWS + 10) * layer_cells + (2 * MOST_ROWS + 10) * metric_cells
    every = HUGE_STEPS * (5 * layer_cells + metric_cells)  # the record's cells: 5 layers a step
    print(f"report of {HUGE_STEPS} logged steps: {cells_parsed['cells']} of {every} cells "
          f"parsed, {cpu:.1f} s CPU")
    # bounded by what is parsed, not by a clock (timings are benchmarks' business, not tests')
    assert MOST_ROWS // 2 * layer_cells <= cells_parsed["cells"] <= most < every / 3


@pytest.mark.xdist_group("huge_record")  # one worker runs the shared fixture once
def test_a_huge_record_reads_bounded_and_keeps_its_edges(huge: Path) -> None:
    record = read_record(huge)
    assert len(record.layers) <= 25_000 and len(record.metrics) <= 25_000
    all_first, all_last = edge_steps(huge / "layers.csv")
    steps = [r["step"] for r in record.layers]
    assert steps[0] == all_first[0]["step"] and steps[-1] == all_last[0]["step"]
    assert [r for r in record.layers if r["step"] == steps[-1]] == all_last
    assert steps == sorted(steps)
    # the evaluated rows (test_loss) are thinned apart from the others: none is lost here
    evaluated = [r["step"] for r in iter_rows(huge / "metrics.csv") if r["test_loss"] is not None]
    assert [r["step"] for r in record.metrics if r["test_loss"] is not None] == evaluated


@pytest.mark.xdist_group("huge_record")  # one worker runs the shared fixture once
def test_finding_the_last_step_does_not_read_the_whole_file(huge: Path,
                                                           bytes_read: Counter[str]) -> None:
    layers = huge / "layers.csv"
    first, last = edge_steps(layers)
    read = bytes_read[str(layers)]
    # the first step from the start, the last from the end: a block or two, of 30 MB
    assert 0 < read <= 2**20 < layers.stat().st_size // 20, read
    # ...and they are the rows a plain reader finds at either end
    with layers.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader([f.readline()]))
        head = [dict(zip(header, fields)) for fields in csv.reader(itertools.islice(f, 50))]
        tail = [dict(zip(header, fields)) for fields in csv.reader(deque(f, maxlen=50))]
    assert head[0]["step"] != head[-1]["step"] and tail[0]["step"] != tail[-1]["step"]
    assert first == [{k: number(v) for k, v in r.items()} for r in head
                     if r["step"] == head[0]["step"]]
    assert last == [{k: number(v) for k, v in r.items()} for r in tail
                    if r["step"] == tail[-1]["step"]]


def test_a_corrupt_summary_raises_for_readers_and_scripts(run_dir: Path) -> None:
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "pid": "me"}))
    with pytest.raises(CorruptRecord, match="pid: expected a whole number"):
        read_record(run_dir)
