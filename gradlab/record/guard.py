"""Writing a run record safely: `GuardedWriter`, the run writer with every write checked.

A write that fails (a full disk, a file-size limit, an I/O error, a file system gone
read-only) or a run directory deleted or moved while training is noticed at the next write,
not at the end: the writer raises `RecordWriteError`, naming the path and the cause, and the
training loop stops and records the run as failed. The runner still tries to complete the
record (summary.json says `failed`, with the error); when even that cannot be written, the
run directory is removed, so nothing half-written is left that reads as a run. A record
that cannot even start (its files cannot be created) is removed at once. Other runs'
records are never touched. `check()` raises the first failure once the record is complete.
No torch.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gradlab.record.writer import LogEvent, RunWriter

T = TypeVar("T")

# errors of a full or failing disk: never "bad input", even when creating the run directory
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS}


class RecordWriteError(Exception):
    """A run record that could not be written: where, why, and what was left on disk."""

    def __init__(self, path: Path, cause: str, run_dir: Path | None = None,
                 what: str = "run record"):
        self.path, self.cause, self.run_dir, self.what = Path(path), cause, run_dir, what
        self.removed = False  # the partial record was removed
        self.completed = False  # ...or completed, as failed, in spite of the failure
        super().__init__(self.message())

    def message(self) -> str:
        left = ("; the partial record was removed" if self.removed else
                f"; the record {self.run_dir} was completed as failed" if self.completed else "")
        return f"cannot write the {self.what} {self.path}: {self.cause}{left}"

    def __str__(self) -> str:
        return self.message()


def cause(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        name = errno.errorcode.get(error.errno or 0)
        return f"{error.strerror}" + (f" ({name})" if name else "")
    return f"{type(error).__name__}: {error}"


class _OpenFailed(OSError):
    def __init__(self, path: Path, error: OSError):
        super().__init__(error.errno, error.strerror)
        self.path = path


class _Writer(RunWriter):
    """RunWriter, telling which file could not be created (its directory exists by then)."""

    def _open(self, name: str, columns: tuple[str, ...]) -> Any:
        try:
            return super()._open(name, columns)
        except OSError as e:
            raise _OpenFailed(self.path / name, e) from e


class GuardedWriter:
    """`RunWriter`'s interface (an observer; `path`, `write_config`, `write_summary`,
    `write_traceback`, `close`), every write checked; `check()` once the record is done."""

    def __init__(self, out: Path, name: str, place: tuple[Path, str] | None = None):
        self.failure: RecordWriteError | None = None
        self._closed = False
        try:
            self._writer = _Writer(out, name, place)
        except _OpenFailed as e:  # the run directory exists, its files cannot be written
            run_dir = e.path.parent
            error = RecordWriteError(e.path, cause(e), run_dir)
            error.removed = remove(run_dir)
            raise error from None
        except OSError as e:
            if e.errno in DISK_ERRORS and e.errno != errno.EROFS:
                raise RecordWriteError(Path(e.filename or Path(out) / name), cause(e)) from None
            raise  # --out cannot hold a run directory (a file, read-only): bad input
        self.path = self._writer.path
        self._identity = _identity(self.path)

    # ------------------------------------------------------------ writes

    def _fail(self, where: Path, why: str) -> RecordWriteError:
        error = RecordWriteError(where, why, self.path)
        if self.failure is None:
            self.failure = error
        return error

    def _write(self, where: Path, write: Callable[[], T], finishing: bool) -> T:
        """Run one write; a failure is recorded and raised. While the record is being
        completed (`finishing`) or started, a failure removes the run directory."""
        try:
            self._check_directory()
            return write()
        except RecordWriteError as e:
            error = e
        except OSError as e:
            error = self._fail(where, cause(e))
        if finishing:  # the record cannot be completed: remove it (if it is still ours)
            self.close()
            first = self.failure or error  # the failure that stopped the run says most
            first.removed = self._identity == _identity(self.path) and remove(self.path)
            raise first
        raise error

    def _check_directory(self) -> None:
        if _identity(self.path) != self._identity:
            raise self._fail(self.path, "the run directory was deleted or moved while the run "
                                        "was writing it")

    def write_config(self, config: dict[str, Any]) -> None:
        self._write(self.path / "config.yaml", lambda: self._writer.write_config(config), True)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write(self.path / "summary.json", lambda: self._writer.write_summary(summary), True)

    def write_traceback(self, text: str) -> None:
        self._write(self.path / "traceback.txt", lambda: self._writer.write_traceback(text), True)

    def check(self) -> None:
        """Raise the write failure that stopped the run, if one did (the record, completed
        as failed, says so too)."""
        if self.failure is not None:
            self.failure.completed = not self.failure.removed
            raise self.failure

    # ------------------------------------------------------------ the observer protocol

    def on_phase_start(self, phase: str) -> None:
        self._writer.on_phase_start(phase)

    def on_step_end(self, event: object) -> None:
        pass

    def on_eval_end(self, event: object) -> None:
        pass

    def on_log(self, event: LogEvent) -> None:
        if self.failure is not None:  # stopped already: nothing more goes into this record
            raise self.failure
        self._write(self.path, lambda: self._writer.on_log(event), False)

    def close(self) -> None:
        """Close the files; a buffer that cannot be flushed any more is dropped."""
        if self._closed:
            return
        for _ in range(8):  # each failing close still closes its file: go on to the next
            try:
                self._writer.close()
                break
            except OSError as e:
                self._fail(self.path, cause(e))
        self._closed = True


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def remove(run_dir: Path) -> bool:
    """Remove a run directory this process created; whether it is gone."""
    try:
        shutil.rmtree(run_dir)
    except FileNotFoundError:
        return False
    except OSError:
        return not run_dir.exists()
    return True
