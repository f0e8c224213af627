"""Files of a record: fresh directories that never collide, atomic writes, JSON-safe values.

Used by the run writer and the comparison record alike; no torch.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def new_run_dir(out: Path, name: str) -> Path:
    """Create and return a fresh run directory; concurrent writers never share one.

    `name` is one path component (config names are validated, file names sanitised), so the
    run directory always lies inside `out`.
    """
    if not name or name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise ValueError(f"run name {name!r} is not a single directory name")
    return unique_dir(Path(out) / name, utc_stamp())


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def unique_dir(parent: Path, stem: str) -> Path:
    """Create `parent/stem`, or `stem-1`, `stem-2`, ... if taken, and return it."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(10_000):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        try:
            path.mkdir()  # atomic: exactly one process creates a given directory
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a directory {stem} under {parent}")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold off Ctrl-C (and a compare worker's stop request) while a record is completed.

    A signal that arrives meanwhile is dropped: the record it would save is being written.
    Signal handlers can only change in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [signal.SIGINT] + [signal.SIGTERM] * callable(signal.getsignal(signal.SIGTERM))
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean(value: Any) -> Any:
    """JSON-safe: NaN and ±Inf become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
