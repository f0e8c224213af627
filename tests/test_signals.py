"""SIGTERM, SIGHUP and SIGKILL, to `gradlab run`, to `gradlab compare` and to its workers.

What Slurm, Kubernetes, systemd and a closed terminal send is handled like Ctrl-C: the record
says `interrupted` with what was logged, a final evaluation and verdicts, and the exit code
is 128 + the signal. `compare` forwards a stop to its workers and waits for them; workers
whose parent dies stop by themselves; one dead worker costs one variant; a second signal
stops at once. Real `python -m gradlab` processes, each in its own session, so `ps` can tell
whether any of them (workers included) is left.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from procs import LONG, TIMEOUT, alive_in_session, logged_rows, run_dirs, start, wait_until, write

from gradlab.record import stopping
from gradlab.record.reader import read_record

SHORT = {**LONG, "train": {**LONG["train"], "steps": 20}}


def logging(out: Path, name: str, rows: int = 3) -> bool:
    return any(logged_rows(d) >= rows for d in run_dirs(out, name))


def pid_of(out: Path, name: str) -> int:
    [run_dir] = run_dirs(out, name)
    return int(json.loads((run_dir / "summary.json").read_text())["pid"])


def comparison(out: Path) -> dict[str, dict[str, str]]:
    [record] = list(out.glob("compare-*"))
    with (record / "comparison.csv").open(newline="", encoding="utf-8") as f:
        return {r["variant"]: r for r in csv.DictReader(f)}


def assert_table_agrees_with_records(rows: dict[str, dict[str, str]], cwd: Path) -> None:
    for row in rows.values():
        if row["run_dir"]:
            assert read_record(cwd / row["run_dir"]).status == row["status"], row


def assert_interrupted_cleanly(run_dir: Path) -> None:
    record = read_record(run_dir)
    s = record.summary
    assert record.status == s["status"] == "interrupted", s["status"]
    assert 0 < s["steps_done"] < s["steps_planned"]
    assert record.metrics and record.metrics[-1]["step"] < s["steps_done"]
    assert "train_loss" in s["final_metrics"] and isinstance(s["final_loss"], float)
    assert s["verdicts"]


# ---------------------------------------------------------------- gradlab run


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """`gradlab run` twice at once, one stopped with SIGTERM, the other with SIGHUP."""
    stopped = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        tmp = tmp_path_factory.mktemp(signal.Signals(sig).name)
        config = write(tmp / "long.yaml", LONG)
        stopped[sig] = {"proc": start("run", str(config), "--out", "runs", "-q", "--no-plots",
                                      cwd=tmp), "out": tmp / "runs"}
    try:
        for s in stopped.values():
            wait_until(lambda s=s: logging(s["out"], "long", rows=25), "25 rows logged")
        for sig, s in stopped.items():
            s["proc"].send_signal(sig)
        for s in stopped.values():
            s["stdout"], s["stderr"] = s["proc"].communicate(timeout=TIMEOUT)
        return stopped
    finally:
        for s in stopped.values():
            if s["proc"].poll() is None:
                os.killpg(s["proc"].pid, signal.SIGKILL)


@pytest.mark.xdist_group("stopped_runs")  # one worker runs the shared fixture once
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_a_run_like_ctrl_c(stopped_runs: dict, sig: int,
                                                   code: int) -> None:
    s = stopped_runs[sig]
    assert s["proc"].returncode == code, s["stderr"]
    assert "Traceback" not in s["stderr"]
    [run_dir] = run_dirs(s["out"], "long")
    assert logged_rows(run_dir) >= 25
    assert_interrupted_cleanly(run_dir)
    assert "interrupted" in s["stdout"]  # the report is printed as for Ctrl-C


# ---------------------------------------------------------------- gradlab compare


def three_long(tmp: Path) -> None:
    for name in ("long", "long2", "long3"):
        write(tmp / "configs" / f"{name}.yaml", {**LONG, "name": name})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_a_signal_to_compare_stops_its_workers_too(tmp_path: Path, sig: int) -> None:
    three_long(tmp_path)  # two run at once (--jobs 2), the third waits
    proc = start("compare", "configs", "--out", "runs", "--jobs", "2", "--no-plots",
                 cwd=tmp_path)
    out = tmp_path / "runs"
    wait_until(lambda: logging(out, "long") and logging(out, "long2"), "both workers to log")
    os.kill(proc.pid, sig)  # to the parent alone, as `kill`, Slurm or Kubernetes do
    signalled = time.monotonic()
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    wait_until(lambda: not alive_in_session(proc.pid), "every gradlab process to end",
               timeout=5.0)
    print(f"{signal.Signals(sig).name}: all processes gone "
          f"{time.monotonic() - signalled:.1f} s after the signal")
    for name in ("long", "long2"):
        [run_dir] = run_dirs(out, name)
        assert_interrupted_cleanly(run_dir)  # even after SIGKILL: the workers saw it
    assert not (out / "long3").exists()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    rows = comparison(out)
    assert rows["long"]["status"] == rows["long2"]["status"] == "interrupted"
    assert rows["long3"]["status"] == "not run"
    assert_table_agrees_with_records(rows, tmp_path)


def test_a_second_ctrl_c_soon_after_the_first_stops_at_once(tmp_path: Path) -> None:
    three_long(tmp_path)
    proc = start("compare", "configs", "--out", "runs", "--jobs", "2", "--no-plots",
                 cwd=tmp_path)
    out = tmp_path / "runs"
    wait_until(lambda: logging(out, "long") and logging(out, "long2"), "both workers to log")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    pressed = time.monotonic()
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - pressed < 15, "a second Ctrl-C must not hang"
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    rows = comparison(out)
    assert_table_agrees_with_records(rows, tmp_path)
    for name in ("long", "long2"):
        [run_dir] = run_dirs(out, name)
        assert read_record(run_dir).status == "interrupted"  # never left `running`
    wait_until(lambda: not alive_in_session(proc.pid), "every gradlab process to end", 5.0)


def test_a_dead_worker_costs_its_variant_only(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer) to one worker: its variant reads `incomplete`, the next variant
    runs in a fresh worker and completes, the other running variant goes on; a lone SIGHUP
    to a worker does not stop it (the terminal's signals are the parent's to act on)."""
    write(tmp_path / "configs" / "a_long.yaml", {**LONG, "name": "a_long"})
    write(tmp_path / "configs" / "b_long.yaml", {**LONG, "name": "b_long"})
    write(tmp_path / "configs" / "c_short.yaml", {**SHORT, "name": "c_short"})
    proc = start("compare", "configs", "--out", "runs", "--jobs", "2", "--no-plots",
                 cwd=tmp_path)
    out = tmp_path / "runs"
    wait_until(lambda: logging(out, "a_long") and logging(out, "b_long"), "both workers to log")
    os.kill(pid_of(out, "b_long"), signal.SIGHUP)
    os.kill(pid_of(out, "a_long"), signal.SIGKILL)
    wait_until(lambda: any(read_record(d).status == "completed" for d in run_dirs(out, "c_short")),
               "the queued variant to complete in a fresh worker")
    [b_dir] = run_dirs(out, "b_long")
    before = logged_rows(b_dir)
    wait_until(lambda: logged_rows(b_dir) > before + 5, "b_long to go on after SIGHUP", 10.0)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "BrokenProcessPool" not in stdout + stderr
    rows = comparison(out)
    assert rows["a_long"]["status"] == "incomplete"
    assert "killed by SIGKILL" in rows["a_long"]["problems"] and rows["a_long"]["run_dir"]
    assert int(rows["a_long"]["steps"]) > 0  # what its record logged
    assert rows["b_long"]["status"] == "interrupted"
    assert rows["c_short"]["status"] == "completed" and rows["c_short"]["run_dir"]
    assert_table_agrees_with_records(rows, tmp_path)
    wait_until(lambda: not alive_in_session(proc.pid), "every gradlab process to end", 5.0)


# ---------------------------------------------------------------- the stop requests themselves


def test_stop_signals_raise_stopped_and_set_the_exit_code() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stopping.stop_on_signals():
        with pytest.raises(stopping.Stopped) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert stopped.value.signum == signal.SIGTERM
        assert isinstance(stopped.value, KeyboardInterrupt)
        assert stopping.exit_code() == 143
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_a_signal_ignored_on_entry_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with stopping.stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
            assert stopping.received() is None and stopping.exit_code() == 130
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_records_are_completed_with_every_stop_signal_held_off() -> None:
    from gradlab.record.files import uninterrupted

    with stopping.stop_on_signals():
        with uninterrupted():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                assert signal.getsignal(sig) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN
