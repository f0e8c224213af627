"""What both framework callbacks share: one `Watch` per training run, driven from hooks.

A framework calls its hooks at fixed points of its own loop; `Driver` turns them into the
`Watch` protocol (`after_backward(step, loss)` with the gradients ready and before the
optimizer step, `after_step(step)` after it, `evaluated(step, ...)` after an evaluation) and
keeps the step numbers itself: one step per optimizer step that had gradients. It imports
no framework.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradlab.watch import Diverged, Watch, WatchError, watch

# options of `gradlab.watch` a callback passes through; the rest it reads from the trainer
WATCH_OPTIONS = ("every", "out", "name", "layers", "on_nonfinite", "activations", "task",
                 "baseline_loss", "baseline_accuracy")


def metric_names(given: Mapping[str, str | Sequence[str]] | None,
                 default: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """gradlab metric → the framework's names for it, the first one present taken."""
    chosen = dict(default) if given is None else dict(given)
    out: dict[str, tuple[str, ...]] = {}
    for key, names in chosen.items():
        if key not in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
            raise WatchError(f"metrics: unknown gradlab metric {key!r}; use train_loss, "
                             "test_loss, train_accuracy or test_accuracy")
        out[key] = (names,) if isinstance(names, str) else tuple(names)
    return out


class Driver:
    """A `Watch` started by a callback at the start of training and completed at its end."""

    def __init__(self, options: dict[str, Any], metrics: dict[str, tuple[str, ...]]):
        unknown = sorted(set(options) - set(WATCH_OPTIONS))
        if unknown:
            raise WatchError(f"unknown option {', '.join(unknown)}; the callback passes "
                             f"{', '.join(WATCH_OPTIONS)} to gradlab.watch")
        self.options = options
        self.metrics = metrics
        self.watch: Watch | None = None
        self.diverged: Diverged | None = None
        self._model: nn.Module | None = None
        self._params: list[nn.Parameter] = []
        self._next = 0
        self._done = 0
        self._pending = False  # after_backward called, after_step not yet

    @property
    def active(self) -> bool:
        return self.watch is not None and not self.watch.closed

    def start(self, model: nn.Module, *, optimizer: Any, start: int, steps: int | None,
              precision: str, clip: dict[str, Any] | None = None) -> Watch:
        self.close()  # a run before this one (fit called twice) is complete
        steps = steps if steps is not None and steps >= 1 else None
        self.watch = watch(model, optimizer=optimizer, start=start, steps=steps,
                           precision=precision, clip=clip, **self.options)
        self._model = model
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._next, self._done, self._pending, self.diverged = start, 0, False, None
        return self.watch

    def before_step(self, loss: torch.Tensor | None) -> bool:
        """The gradients are ready and the optimizer has not stepped: `after_backward`. A step
        without any gradient (a skipped training step) is not a step here. True: the first
        NaN/Inf was found and the record completed as diverged (stop training)."""
        if not self.active or self.watch is None:
            return False
        if not any(p.grad is not None for p in self._params):
            return False
        try:
            self.watch.after_backward(self._next, loss=loss)
        except Diverged as e:
            return self._diverged(e)
        self._pending = True
        return False

    def after_step(self) -> bool:
        """The optimizer has stepped: `after_step`. True as for `before_step`."""
        if not self._pending or not self.active or self.watch is None:
            self._pending = False
            return False
        self._pending = False
        try:
            self.watch.after_step(self._next)
        except Diverged as e:
            return self._diverged(e)
        finally:
            self._next += 1
            self._done += 1
        return False

    def evaluated(self, logged: Mapping[str, Any]) -> None:
        """An evaluation's metrics, read by the names in `metrics`; none found: nothing."""
        if not self.active or self.watch is None or self._pending:
            return
        values: dict[str, float] = {}
        for key, names in self.metrics.items():
            name = next((n for n in names if n in logged), None)
            if name is None:
                continue
            value = logged[name]
            value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
            if math.isfinite(value):
                values[key] = value
        if values:
            self.watch.evaluated(self._next - 1 if self._done else None, **values)

    def failed(self, error: BaseException) -> None:
        """Training raised: the record is `failed` (with traceback.txt), or `interrupted`
        for Ctrl-C, as when a `with gradlab.watch(...)` block is left by an exception."""
        if self.active and self.watch is not None:
            self.watch.__exit__(type(error), error, error.__traceback__)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()

    def _diverged(self, error: Diverged) -> bool:
        self.diverged = error
        self._pending = False
        warnings.warn(f"gradlab: {error}; training stops", RuntimeWarning, stacklevel=3)
        return True


class Driven:
    """What a callback built on a `Driver` shows its user: the run's `Watch` and whether it
    diverged."""

    _driver: Driver

    @property
    def watch(self) -> Watch | None:
        """The last run's `Watch` (its `path`, `summary`, `report()`), None before training."""
        return self._driver.watch

    @property
    def diverged(self) -> bool:
        return self._driver.diverged is not None
