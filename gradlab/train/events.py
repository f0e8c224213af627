"""What the training loop tells its observers, as typed events with one step convention.

`step` is always the 0-based index of a training step. An evaluation runs after that step's
update (the first one, before any update, has `step` None); a log row's loss is the
minibatch loss *of* that step, its test metrics the evaluation after it. Observers
implement the four methods of `Observer`; the loop calls them through `Observers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StepEnd:
    """A training step is done (`total` steps are planned in this phase)."""

    step: int
    total: int
    loss: float
    grad_norm: float


@dataclass(frozen=True)
class Evaluated:
    """An evaluation: `{split}_{metric}` keys (train_loss, test_loss, test_accuracy, ...)."""

    step: int | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class Logged:
    """A logged step: its metrics.csv row, the probe's per-layer rows (empty when this step was
    logged only for its evaluation) and, for recurrent models, ‖∂L/∂h_t‖ for t = 1..T."""

    step: int
    metrics: dict[str, Any]
    layers: list[dict[str, Any]] = field(default_factory=list)
    time_grads: list[float] | None = None


class Observer(Protocol):
    def on_phase_start(self, phase: str) -> None: ...

    def on_step_end(self, event: StepEnd) -> None: ...

    def on_eval_end(self, event: Evaluated) -> None: ...

    def on_log(self, event: Logged) -> None: ...


class Observers:
    """Several observers seen as one, called in order."""

    def __init__(self, observers: tuple[Observer, ...] = ()):
        self.observers = observers

    def on_phase_start(self, phase: str) -> None:
        for obs in self.observers:
            obs.on_phase_start(phase)

    def on_step_end(self, event: StepEnd) -> None:
        for obs in self.observers:
            obs.on_step_end(event)

    def on_eval_end(self, event: Evaluated) -> None:
        for obs in self.observers:
            obs.on_eval_end(event)

    def on_log(self, event: Logged) -> None:
        for obs in self.observers:
            obs.on_log(event)
