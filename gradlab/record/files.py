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
    """Hold off Ctrl-C, SIGTERM and SIGHUP (and a compare worker's stop requests, SIGUSR1 and
    SIGUSR2) while a record is completed.

    A signal that arrives meanwhile is dropped: the record it would save is being written.
    SIGINT is always held; the others only where gradlab handles them (a handler is set), so a
    library caller's default SIGTERM still ends its process. Signal handlers can only change
    in the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    others = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
              if hasattr(signal, n)]
    held = [signal.SIGINT] + [sig for sig in others if callable(signal.getsignal(sig))]
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it. A write that fails (a
    full disk) leaves `path` as it was and no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


# JSON has no NaN or Infinity: a measured non-finite number is written as one of these strings,
# while null means "not measured". `decode` turns them back into floats.
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# summary.json keys whose values are text, never numbers written as text
TEXT_KEYS = frozenset({"name", "status", "error", "kind", "severity", "message", "what",
                       "layer", "phase", "direction", "module", "device", "task", "method",
                       "optimizer", "gradlab_version", "torch_version", "python_version",
                       "config_hash", "remedies", "by"})


def clean(value: Any) -> Any:
    """JSON-safe, recursively: NaN and ±Inf become "nan", "inf" and "-inf" (None stays null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def decode(value: Any, key: str = "") -> Any:
    """The inverse of `clean` on data read back: "nan"/"inf"/"-inf" in a number's place are
    floats again (text fields, such as a run's name, are left alone)."""
    if isinstance(value, str) and key not in TEXT_KEYS:
        return NONFINITE.get(value, value)
    if isinstance(value, dict):
        return {k: decode(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, key) for v in value]
    return value
