"""Disks that fill up, turn read-only, lose a run directory or are reached through a symlink.

Every write failure is one line naming the path and the cause, exit 3 (an --out that cannot
hold records at all: exit 2), noticed at the next write; nothing half-written is left that
reads as a run, and earlier records are untouched. The full and read-only disks are small
tmpfs mounts: as root, or, for any other user, as root in a user namespace of their own
(`conftest.pytest_pyfunc_call`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny, tiny_config
from procs import LONG, TIMEOUT, start, wait_until, write
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.record.reader import find_runs, read_record


def cli(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(size, read_only=False) → a fresh tmpfs under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str = "2m", name: str = "disk") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        # as root, or root in a user namespace (conftest's pytest_pyfunc_call runs a disk test
        # there for any other user), a failed mount is a failure
        assert done.returncode == 0, f"mount -t tmpfs failed as root: {done.stderr.strip()}"
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def read_only(point: Path) -> None:
    # the mount read-only (a bind remount): also allowed to root in a user namespace, where
    # remounting the tmpfs itself read-only is not
    subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], check=True, capture_output=True)


def fill(point: Path) -> None:
    """Fill a file system to the last byte."""
    with (point / "filler").open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
        for size in (512, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def digest(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())
            if p.is_file()}


def earlier_record(out: Path) -> tuple[Path, dict[str, str]]:
    from gradlab.runner import run_config

    path = run_config(tiny_config(name="earlier"), out).path
    return path, digest(path)


def logging_dirs(out: Path, name: str) -> list[Path]:
    return [d for d in (out / name).glob("*")
            if (d / "metrics.csv").is_file() and (d / "metrics.csv").stat().st_size > 300]


def run_until(config: Path, out: Path, act: Callable[[Path], Any]) -> tuple[Any, Path, float]:
    """`gradlab run CONFIG --out OUT` in this process (torch is imported already); once the
    run has logged rows, `act(run_dir)` from a second thread. Returns the CLI's result, the
    run directory and the seconds from `act` to the run's end. A run that does not stop within
    TIMEOUT of `act` (or of a failure to act) is stopped as Ctrl-C would stop it."""
    seen: dict[str, Any] = {}
    ended = threading.Event()

    def watch() -> None:
        try:
            wait_until(lambda: bool(logging_dirs(out, "long")), "rows to be logged")
            [seen["run_dir"]] = logging_dirs(out, "long")
            act(seen["run_dir"])
            seen["acted"] = time.monotonic()
        except BaseException as e:  # re-raised in the test's thread
            seen["error"] = e
        if not ended.wait(TIMEOUT):
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = cli("run", config, "--out", out, "-q", "--no-plots")
    finally:
        finished = time.monotonic()
        ended.set()
        watcher.join()
    if "error" in seen:
        raise seen["error"]
    return result, seen["run_dir"], finished - seen["acted"]


def one_line_error(stderr: str, *fragments: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "cannot" in line]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr
    return lines[0]


# ---------------------------------------------------------------- a disk that fills up


def test_a_disk_that_fills_mid_run_stops_it_at_the_next_write(disk, tmp_path: Path) -> None:
    out = disk("2m")
    before, sums = earlier_record(out)
    config = write(tmp_path / "long.yaml", LONG)
    result, run_dir, after = run_until(config, out, lambda run_dir: fill(out))
    assert after < 20  # the next flush, not the millionth step
    assert result.exit_code == 3, result.output
    one_line_error(result.output, str(run_dir), "No space left on device",
                   "partial record was removed")
    assert not run_dir.exists()  # nothing half-written that would read as a killed run
    assert find_runs(out) == [before] and digest(before) == sums  # the earlier one untouched


def test_a_disk_full_at_start_leaves_no_phantom_run(disk, tmp_path: Path) -> None:
    out = disk("1m")
    before, sums = earlier_record(out)
    fill(out)
    result = cli("run", write(tmp_path / "tiny.yaml", tiny()), "--out", out, "-q", "--no-plots")
    assert result.exit_code == 3, result.output
    one_line_error(result.output, str(out / "tiny"), "No space left on device")
    assert find_runs(out) == [before] and digest(before) == sums
    assert not list((out / "tiny").glob("*"))
    listed = cli("runs", out)
    assert "incomplete" not in listed.output and "earlier/" in listed.output


def test_compare_on_a_full_disk_says_so_for_each_variant_and_for_its_record(
        disk, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    out = disk("1m")
    before, sums = earlier_record(out)
    write(tmp_path / "configs" / "a.yaml", tiny(name="a"))
    write(tmp_path / "configs" / "b.yaml", tiny(name="b"))
    fill(out)
    result = cli("compare", tmp_path / "configs", "--out", out, "--no-plots", "-q")
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "a: cannot write the run record" in result.output
    assert "cannot write the compare record" in result.output
    assert "No space left on device" in result.output
    assert find_runs(out) == [before] and digest(before) == sums
    assert not list(out.glob("compare-*"))  # no half-written compare record either


def test_spawned_compare_workers_report_a_full_disk_too(disk, tmp_path: Path) -> None:
    out = disk("1m")
    write(tmp_path / "configs" / "a.yaml", tiny(name="a"))
    fill(out)
    proc = start("compare", "configs", "--out", str(out), "--no-plots", "-q", cwd=tmp_path)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr + stdout
    assert "a: cannot write the run record" in stderr and "No space left on device" in stderr
    assert "failed" in stdout  # the table is still printed


def test_a_file_size_limit_mid_run_completes_the_record_as_failed(tmp_path: Path) -> None:
    """When the summary still fits (a quota on file size), the record is kept, as failed."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    config = write(tmp_path / "long.yaml", LONG)
    proc = start("run", str(config), "--out", "runs", "-q", "--no-plots", cwd=tmp_path,
                 preexec=limit)
    _, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 3, stderr
    [run_dir] = list((tmp_path / "runs" / "long").iterdir())
    one_line_error(stderr, str(run_dir.relative_to(tmp_path)), "File too large",
                   "was completed as failed")
    record = read_record(run_dir)
    assert record.status == "failed" and "File too large" in record.summary["error"]
    assert 0 < record.summary["steps_done"] < 1_000_000 and record.metrics


# ---------------------------------------------------------------- read-only and odd --out


@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_read_only_or_file_out_is_one_clear_line(disk, tmp_path: Path, command: str) -> None:
    config = write(tmp_path / "tiny.yaml", tiny())
    ro = disk("1m")
    read_only(ro)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for out, causes in ((ro, ("Read-only file system",)),
                        (a_file, ("File exists", "Not a directory")),
                        (a_file / "sub", ("Not a directory",))):
        result = cli(command, config, "--out", out, "-q", "--no-plots")
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert f"--out {out}: cannot create" in result.output, result.output
        assert any(cause in result.output for cause in causes), result.output


def test_compare_reuse_with_a_read_only_out_is_one_clear_line(disk, tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    out = disk("4m")
    config = write(tmp_path / "tiny.yaml", tiny())
    assert cli("compare", config, "--out", out, "--no-plots", "-q").exit_code == 0
    read_only(out)
    result = cli("compare", config, "--out", out, "--no-plots", "-q", "--reuse")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Read-only file system" in result.output


# ---------------------------------------------------------------- the run directory vanishes


def test_a_run_directory_deleted_while_training_is_noticed_at_the_next_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)  # --out runs: the message names the run as runs/long/<stamp>
    config = write(tmp_path / "long.yaml", LONG)
    result, run_dir, after = run_until(config, Path("runs"), shutil.rmtree)
    assert after < 20
    assert result.exit_code == 3, result.output
    one_line_error(result.output, str(run_dir), "deleted or moved")
    assert not run_dir.exists()


# ---------------------------------------------------------------- symlinks


def test_runs_reached_through_symlinked_names_are_listed(tmp_path: Path) -> None:
    config = write(tmp_path / "tiny.yaml", tiny())
    runs = tmp_path / "runs"
    runs.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (runs / "sub").symlink_to(tmp_path / "elsewhere")  # --out runs/sub, a link
    (tmp_path / "big_disk" / "tiny").mkdir(parents=True)
    (runs / "tiny").symlink_to(tmp_path / "big_disk" / "tiny")  # the config's directory, a link
    (tmp_path / "link_to_runs").symlink_to(runs)
    for out in (runs / "sub", runs, tmp_path / "link_to_runs"):
        assert cli("run", config, "--out", out, "-q", "--no-plots").exit_code == 0
    def listed(root: Path) -> list[str]:
        result = cli("runs", root)
        assert result.exit_code == 0, result.output
        return [line.split()[0] for line in result.stdout.splitlines() if "/20" in line]

    # each OUT lists the runs written into it, each once
    assert len(listed(runs / "sub")) == 1 and listed(runs / "sub")[0].startswith("tiny/")
    names = listed(runs)
    assert len(names) == 2 and len(set(names)) == 2 and all(n.startswith("tiny/") for n in names)
    assert listed(tmp_path / "link_to_runs") == names
    # a compare record's variants/ links are not runs of their own
    from gradlab.compare import Variant, comparison_rows, write_record

    run_dir = next((runs / "tiny").iterdir())
    write_record(comparison_rows([Variant(Path("tiny.yaml"), config=tiny_config(),
                                          run_dir=run_dir, record=read_record(run_dir))]), runs)
    assert listed(runs) == names


def test_a_summary_on_a_full_disk_is_never_half_written(disk, tmp_path: Path) -> None:
    from gradlab.record.files import write_atomic

    out = disk("1m")
    target = out / "summary.json"
    target.write_text(json.dumps({"status": "running"}))
    fill(out)
    with pytest.raises(OSError):
        write_atomic(target, json.dumps({"status": "completed", "pad": "x" * 100_000}))
    assert json.loads(target.read_text()) == {"status": "running"}
    assert sorted(p.name for p in out.iterdir()) == ["filler", "summary.json"]  # no temp file
