"""Real `python -m gradlab` processes for the signal, interruption and disk tests.

Each process runs in its own session, so `ps` can tell whether any of them (compare's workers
included) is left, and so a terminal's Ctrl-C can be sent to its process group. `stop_all`
(conftest calls it after every test) kills whatever a test started and left running.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

# Minutes of training if nobody stops it; logs every 5 steps, so rows appear at once.
LONG: dict[str, Any] = {
    "name": "long", "seed": 0, "device": "cpu",
    "data": {"kind": "teacher", "n_samples": 256, "n_features": 8},
    "model": {"depth": 4, "width": 16, "activation": "tanh"},
    "train": {"steps": 1_000_000, "batch_size": 16, "eval_every": 100_000},
    "probe": {"every": 5}}
TIMEOUT = 120  # generous: the shared machine may be slow to import torch
POLL = 0.05  # seconds between two looks at the records a process writes

_started: list[subprocess.Popen[str]] = []


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: restore
    # the default so Python installs its Ctrl-C handler whatever started the tests.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, cwd: Path, preexec: Callable[[], None] = default_sigint,
          columns: int = 200) -> subprocess.Popen[str]:
    """`python -m gradlab ARGS` in a session of its own, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": str(columns)}
    proc = subprocess.Popen([sys.executable, "-m", "gradlab", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=preexec)
    _started.append(proc)
    return proc


def alive_in_session(sid: int) -> list[int]:
    """The live (not zombie) processes of a session: a gradlab process and its workers."""
    listing = subprocess.run(["ps", "-e", "-o", "pid=,sid=,stat="], capture_output=True,
                             text=True, check=True).stdout
    return [int(pid) for pid, s, stat in (line.split() for line in listing.splitlines())
            if int(s) == sid and not stat.startswith("Z")]


def stop_all() -> None:
    """Kill every process started (and their workers), whatever the test asserted."""
    while _started:
        proc = _started.pop()
        for pid in alive_in_session(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL)


def logged_rows(run_dir: Path) -> int:
    """The complete rows of a run's metrics.csv so far."""
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


def run_dirs(out: Path, name: str) -> list[Path]:
    """The run directories of config `name` under `out` that have begun their metrics."""
    return sorted(p for p in (out / name).glob("*") if (p / "metrics.csv").is_file())
