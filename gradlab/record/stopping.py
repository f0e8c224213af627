"""Stop requests: every signal that asks gradlab to stop stops it the same way.

SIGINT (Ctrl-C), SIGTERM (what Slurm, Kubernetes, systemd and `kill` send) and SIGHUP (a
closed terminal) raise `Stopped`, a KeyboardInterrupt, in the main thread (`stop_on_signals`),
so the training loop records any of them as `interrupted` with what it logged. The first one
received decides the exit code, 128 + its number: 130, 143, 129 (`exit_code`). A signal that
is ignored when gradlab starts (`nohup`, a background job's SIGINT) stays ignored. No torch.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

_received: list[int] = []  # the stop signals this process received, first one first


class Stopped(KeyboardInterrupt):
    """A stop signal, raised where the main thread was (a KeyboardInterrupt, so every
    `except KeyboardInterrupt` that keeps a record intact handles it)."""

    def __init__(self, signum: int):
        super().__init__(name(signum))
        self.signum = signum


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def note(signum: int) -> None:
    """Remember that a stop signal arrived (for the exit code)."""
    _received.append(signum)


def received() -> int | None:
    """The first stop signal this process received, if any."""
    return _received[0] if _received else None


def reset() -> None:
    _received.clear()


def exit_code() -> int:
    """128 + the first stop signal's number; 130 (SIGINT) when none was seen (a test's
    KeyboardInterrupt)."""
    return 128 + (received() or signal.SIGINT)


def _stop(signum: int, frame: Any) -> None:
    note(signum)
    raise Stopped(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Make SIGINT, SIGTERM and SIGHUP raise `Stopped` while the block runs (main thread only;
    elsewhere this does nothing). Signals ignored on entry stay ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
