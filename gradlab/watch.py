"""Probe your own model: `gradlab.watch(model)` and the `Watch` it returns (a driver).

```python
import gradlab
with gradlab.watch(model, every=10, out="runs", name="my_cnn", optimizer=opt) as probe:
    for step, (x, y) in enumerate(loader):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward()
        probe.after_backward(step, loss=loss)
        opt.step()
        probe.after_step(step)
print(probe.report())          # or: gradlab report runs/my_cnn/<stamp>
```

`watch` finds the model's parameterised layers (`build.discover`), hooks them with the
trainer's own `train.probe.Probe` (float64 norms, one transfer per logged step; given the model,
it also finds activations and the rows' order as the model runs) and a
`train.sentinel.Sentinel` (the first-NaN sentinel), and writes the same run record as
`gradlab run` with `record.guard.GuardedWriter`: metrics.csv, layers.csv, config.yaml (a
description of the model, not a config to rerun) and summary.json from
`record.summary.build_summary`, with verdicts from `analyse.verdicts.diagnose` whose remedies
are rewritten for a model gradlab did not build. The model is not changed: only hooks are added,
and `close()` removes them.

Each step costs one host sync (the loss and the total gradient norm, where a NaN/Inf is
noticed) plus, on logged steps, the probe's single fetch. A non-finite loss or gradient is
located once (`Sentinel.locate`: a replay of the failing batch) and recorded in
`first_nonfinite`; with `on_nonfinite="raise"` (the default) `after_backward` then completes
the record as `diverged` and raises `Diverged`, which the `with` block absorbs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
import traceback
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType, TracebackType
from typing import Any

import torch
from torch import nn

from gradlab import __version__
from gradlab.analyse.verdicts import describe_fix, diagnose, gradient_reach
from gradlab.build.discover import (
    DiscoveryError,
    Found,
    activation_kind,
    check_model,
    discover,
    display_name,
    parameter_signature,
    unwatched,
)
from gradlab.build.probed import ProbedLayer
from gradlab.build.stepwise import time_steps
from gradlab.config.schema import NAME_PATTERN
from gradlab.record.files import uninterrupted
from gradlab.record.guard import GuardedWriter
from gradlab.record.summary import build_summary
from gradlab.train.events import Logged
from gradlab.train.loop import TINY_NORM, precision_limits, total_norm
from gradlab.train.probe import F64, Probe
from gradlab.train.sentinel import Sentinel

METRIC_KEYS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
LAST_LOSSES = 10  # the final minibatch loss is the mean of the last this many steps
# mixed precision: this many overflowed steps in a row is a divergence, not loss scaling
# (GradScaler halves its scale each time: from 2**16 to below 1 takes 17)
AMP_PATIENCE = 24


class WatchError(Exception):
    """A model that cannot be watched, or a watch used wrongly; the message names the problem.
    Raised inside a step, it completes the record as `failed` first."""


class Diverged(Exception):
    """The loss or a gradient went NaN/Inf; `where` is summary.json's `first_nonfinite`."""

    def __init__(self, where: dict[str, Any], path: Path):
        self.where, self.path = where, path
        super().__init__(describe(where) + f"; the record {path} says diverged")


def describe(where: dict[str, Any]) -> str:
    """One line for a `first_nonfinite`."""
    value = where.get("value") or "NaN/Inf"
    module, what, step = where.get("module"), where.get("what"), where.get("step")
    if what == "weights":
        text = f"the weights of {module} became {value} in the update of step {step}"
    elif what == "input":
        text = f"the batch of step {step} holds {value}"
    elif what == "loss":
        text = (f"the loss of step {step} is {value}" if where.get("direction") == "forward"
                else f"the loss's gradient at step {step} is {value}") + \
            " (every module's output was finite)"
    elif module is None:
        text = f"a {what or 'value'} became {value} at step {step} ({where.get('note', '')})"
    else:
        way = "its forward output" if where.get("direction") == "forward" else \
            "the gradient it sends backward"
        text = f"{module} produced {value} in {way} at step {step}"
    passed = where.get("passed_on") or []
    if passed:
        text += f"; passed on by {', '.join(passed)}"
    return text


def watch(model: nn.Module, *, every: int = 10, out: str | os.PathLike[str] = "runs",
          name: str | None = None, layers: Sequence[nn.Module | str | ProbedLayer] | None = None,
          steps: int | None = None, optimizer: torch.optim.Optimizer | None = None,
          start: int = 0, on_nonfinite: str = "raise", activations: bool = True,
          task: str | None = None, baseline_loss: float | None = None,
          baseline_accuracy: float | None = None,
          scaler: torch.amp.GradScaler | None = None, precision: str = "fp32",
          clip: dict[str, Any] | None = None) -> Watch:
    """Watch `model`'s layers and write a run record under `out/name/<stamp>/`.

    every: log per-layer statistics every `every` steps (and on the last, when `steps` is
        given). steps: the steps planned, if known. start: the first step's number.
    layers: what to watch (modules, their qualified names, or `ProbedLayer`s), instead of
        every Linear/Conv/Embedding/norm/attention/RNN layer found.
    optimizer: read each step's learning rate from it (its first parameter group).
    on_nonfinite: "raise" (stop at the first NaN/Inf: the record says diverged, `Diverged`
        is raised) or "record" (note where it appeared and go on).
    activations: keep activation statistics (the outputs of activation modules).
    task, baseline_loss, baseline_accuracy: what a trivial predictor scores (e.g. ln 10 and
        0.1 for ten balanced classes); with evaluations (`evaluated`) they let the verdicts
        judge whether the net learned.
    scaler: the `torch.amp.GradScaler` of a mixed-precision loop (call after_backward before
        scaler.unscale_/scaler.step): gradient statistics are divided by its scale, and a
        step whose scaled gradients overflowed (the scaler skips it) is counted, not taken
        for a divergence, unless AMP_PATIENCE such steps come in a row.
    precision: "bf16" or "fp16" when the loop runs its forward under `torch.autocast` in that
        dtype: the rows then hold headroom against its limits (`z_absmax`, `overflow`,
        `grad_tiny`; `grad_underflow` needs a float32 backward of the same batch and is not
        measured here) and summary.json `precision`, which the precision verdict reads.
    clip: how the loop clips its gradients, which gradlab does not see: `{"max_norm": 1.0}`
        (clip_grad_norm_; or `{"max_value": 0.5}`, clip_grad_value_) and `"seen": "before"`
        (after_backward is called before clipping: the default) or `"after"`. Written to
        config.yaml `train.clip`; seen before clipping by norm, the steps it fires on are
        counted (summary `clip_fraction`); seen after, the report says the norms are capped.
    """
    return Watch(model, every=every, out=out, name=name, layers=layers, steps=steps,
                 optimizer=optimizer, start=start, on_nonfinite=on_nonfinite,
                 activations=activations, task=task, baseline_loss=baseline_loss,
                 baseline_accuracy=baseline_accuracy, scaler=scaler, precision=precision,
                 clip=clip)


class Watch:
    """A watched model: call `after_backward(step, loss)` and `after_step(step)` each step,
    `evaluated(step, **metrics)` after an evaluation, and `close()` (or use `with`)."""

    def __init__(self, model: nn.Module, *, every: int = 10,
                 out: str | os.PathLike[str] = "runs", name: str | None = None,
                 layers: Sequence[nn.Module | str | ProbedLayer] | None = None,
                 steps: int | None = None, optimizer: torch.optim.Optimizer | None = None,
                 start: int = 0, on_nonfinite: str = "raise", activations: bool = True,
                 task: str | None = None, baseline_loss: float | None = None,
                 baseline_accuracy: float | None = None,
                 scaler: torch.amp.GradScaler | None = None, precision: str = "fp32",
                 clip: dict[str, Any] | None = None):
        _check_options(every, steps, start, on_nonfinite, task)
        self._clip = _check_clip(clip)
        self._clipped = 0  # steps the loop's clipping fired on, where that can be seen
        if precision not in ("fp32", "bf16", "fp16"):
            raise WatchError(f"precision={precision!r}: expected 'fp32', 'bf16' or 'fp16' (the "
                             "dtype the loop's torch.autocast runs in)")
        self.precision = precision
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise WatchError(f"scaler: expected a torch.amp.GradScaler, got {type(scaler).__name__}")
        try:
            check_model(model)
            found = discover(model, layers)
        except DiscoveryError as e:
            raise WatchError(str(e)) from None
        missed = unwatched(model, found) if layers is None else {}
        if missed:  # a verdict about "every layer" would be about the watched ones only
            kinds = ", ".join(f"{kind} ×{n}" for kind, n in missed.items())
            warnings.warn(f"gradlab.watch: {sum(missed.values())} weight(s) in modules of no "
                          f"layer kind gradlab knows are not watched ({kinds}); pass "
                          "layers=[...] (modules or their names) to watch them",
                          stacklevel=_callers_level())
        self.model = model
        self.name = _run_name(name, model)
        self.every, self.steps, self.start = every, steps, start
        self.on_nonfinite = on_nonfinite
        self.optimizer = optimizer
        self.scaler = scaler
        self._overflows = 0  # mixed precision: steps the scaler skipped
        self._in_a_row = 0
        self.first_nonfinite: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self._found = found
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._signature = parameter_signature(model)
        self._next, self._state = start, "ready"  # ready → after_backward → after_step → ready
        self._closed = False
        self._steps_done = 0
        self._losses: deque[float] = deque(maxlen=LAST_LOSSES)
        self._first_loss: float | None = None
        self._initial: dict[str, float] = {}
        self._final: dict[str, float] = {}
        self._row: dict[str, Any] | None = None  # the last logged step's row, until it is written
        self._last: dict[str, Any] | None = None  # the last step's loss, lr and gradient norm
        self._order: list[int] | None = None
        self._log_this = False
        self._error: WatchError | None = None
        # the last recurrent module watched gets the time-step shadow on the steps that record
        # ‖∂L/∂h_t‖ (time_grads.csv), as gradlab's own recurrent models do
        top = max((i for i, f in enumerate(found) if isinstance(f.owner, nn.RNNBase)),
                  default=None)
        owner = found[top].owner if top is not None else None
        steps_of = time_steps(owner) if isinstance(owner, nn.RNNBase) else None
        through_time = self._owner_name(top) if steps_of is not None and top is not None \
            else None
        self.config = _describe_model(self.name, model, found, every, activations, optimizer,
                                      through_time)
        if self._clip is not None:
            self.config["train"]["clip"] = dict(self._clip)
        device = next(model.parameters()).device
        self._base: dict[str, Any] = {
            "name": self.name, "pid": os.getpid(), "device": device.type,
            "steps_planned": steps, "task": task, "flush_denormal": False,
            "n_params": sum(p.numel() for p in model.parameters()),
            "gradlab_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "config_hash": hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
            .hexdigest()[:16],
            "baseline_loss": baseline_loss,
            **({"baseline_accuracy": baseline_accuracy} if baseline_accuracy is not None else {}),
            "prediction": None, "source": "watch",
        }
        last = start + steps - 1 if steps is not None else -1
        self._probe = Probe([f.layer for f in found], every=every, last_step=last,
                            activations=activations, precision=precision, model=model,
                            owners=[f.owner for f in found],
                            time=steps_of)
        self._sentinel = Sentinel(model)
        try:
            try:
                self._writer = GuardedWriter(Path(out), self.name)
            except OSError as e:  # a file, a read-only place: bad input, named as such
                raise WatchError(f"out={str(out)!r}: cannot create records there: "
                                 f"{e.strerror or e}") from None
            self._writer.write_config(self.config)
            self._writer.write_summary({**self._base, "status": "running", "error": None,
                                        "steps_done": 0})
        except BaseException:
            self._probe.close()
            self._sentinel.close()
            raise
        self.path: Path = self._writer.path
        self._started = time.perf_counter()
        self._seconds = 0.0
        self._probe.before_forward(start)

    # ------------------------------------------------------------ the user's loop

    @property
    def layers(self) -> list[str]:
        """The watched rows' names, in the order they are recorded."""
        return [self._found[i].layer.name for i in self._row_order()]

    @property
    def diverged(self) -> bool:
        return self.first_nonfinite is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def _counts_clipping(self) -> bool:
        """Whether the steps the loop clips can be counted: by norm, seen before it."""
        return self._clip is not None and self._clip["by"] == "norm" \
            and self._clip["seen"] == "before"

    def after_backward(self, step: int, loss: torch.Tensor | float | None = None) -> None:
        """Call after `loss.backward()` and before `optimizer.step()`: reads the gradients,
        checks the loss and the gradient norm for NaN/Inf (one sync)."""
        self._open(f"after_backward({step})")
        if self._state == "after_backward":
            raise self._fail(f"after_backward({step}) called twice in a row: call "
                             f"after_step({self._next}) after optimizer.step() first")
        if step != self._next:
            raise self._fail(f"after_backward({step}) out of order: the next step is "
                             f"{self._next} (steps count up by one from start={self.start})")
        self._flush_row()
        logged = self._probe.wants(step)
        if logged or step == self.start:
            self._check_unchanged(step)
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            raise self._fail(f"step {step}: no parameter has a gradient: call after_backward "
                             "after loss.backward() (a model whose every layer is frozen has "
                             "nothing to watch)")
        scale = self._loss_scale()
        norm = total_norm(grads) if scale is None else total_norm(grads) / scale
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise self._fail(f"after_backward({step}, loss=...): expected the scalar loss, "
                                 f"got a tensor of shape {tuple(loss.shape)}")
            loss_t = loss.detach().reshape(()).to(norm.device, F64)
        else:
            loss_t = torch.tensor(math.nan if loss is None else float(loss), dtype=F64,
                                  device=norm.device)
        loss_v, norm_v = torch.stack([loss_t, norm.to(F64)]).tolist()  # the step's one sync
        if loss is None:
            loss_v = None
        if not (math.isfinite(norm_v) and norm_v >= TINY_NORM):
            # a float32 norm that overflowed with finite entries, or lost entries whose squares
            # underflowed: measured again in float64 (a second sync, on such steps only)
            norm_v = float(total_norm(grads, 2.0, F64) / (1.0 if scale is None else scale))
        self._probe.after_backward(step)
        if scale is not None:
            self._probe.unscale(scale)
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer is not None else None
        self._last = {"step": step, "loss": loss_v, "lr": lr, "grad_norm": norm_v}
        if self._counts_clipping and math.isfinite(norm_v):
            self._clipped += norm_v > self._clip["max_norm"]  # type: ignore[index]
        if loss_v is not None:
            if self._first_loss is None:
                self._first_loss = loss_v
            self._losses.append(loss_v)
        self._state = "after_backward"
        loss_finite = loss_v is None or math.isfinite(loss_v)
        finite = math.isfinite(norm_v) and loss_finite
        if scale is not None and loss_finite:
            # the scaled gradients overflowed: the scaler skips this step and lowers its scale
            self._in_a_row = 0 if finite else self._in_a_row + 1
            self._overflows += not finite
            if not finite and self._in_a_row < AMP_PATIENCE:
                return
        if not finite and self.first_nonfinite is None:
            where = self._sentinel.locate(loss_finite=loss_finite, scale=scale, loss=loss_v)
            at = step - 1 if where["what"] == "weights" and step > self.start else step
            self.first_nonfinite = {"step": at, "layer": where["module"], **where}
            self._log_this = True  # the step that went non-finite is on the record
            if self.on_nonfinite == "raise":
                self._write_row(self._step_row(self._probe.flush(step)))
                self._complete("diverged")
                raise Diverged(self.first_nonfinite, self.path)

    def after_step(self, step: int) -> None:
        """Call after `optimizer.step()`: update-to-weight ratios and, on logged steps, the
        per-layer rows (one transfer)."""
        self._open(f"after_step({step})")
        if self._state != "after_backward" or step != self._next:
            expected = (f"after_step({self._next})" if self._state == "after_backward"
                        else f"after_backward({self._next})")
            raise self._fail(f"after_step({step}) out of order: expected {expected} "
                             "(after_backward(step) comes before optimizer.step(), "
                             "after_step(step) after it)")
        rows = self._probe.after_step(step)
        self._steps_done += 1
        self._seconds = time.perf_counter() - self._started
        if rows is not None or self._log_this:
            self._row = self._step_row(rows)
            self._log_this = False
        bad = next((r for r in rows or [] if r["update_ratio"] is not None
                    and not math.isfinite(r["update_ratio"])), None)
        self._next, self._state = step + 1, "ready"
        self._probe.before_forward(step + 1)
        if bad is not None and self.first_nonfinite is None:
            self.first_nonfinite = {"step": step, "layer": bad["name"], "what": "weights",
                                    "direction": None, "module": self._owner_name(bad["layer"]),
                                    "passed_on": [], "value": None}
            if self.on_nonfinite == "raise":
                self._complete("diverged")
                raise Diverged(self.first_nonfinite, self.path)

    def evaluated(self, step: int | None = None, **metrics: float) -> None:
        """An evaluation after `step`'s update (None: before training), with keys among
        train_loss, test_loss, train_accuracy, test_accuracy. The last one is the run's
        final metrics; test metrics go into metrics.csv."""
        self._open("evaluated()")
        unknown = sorted(set(metrics) - set(METRIC_KEYS))
        if unknown or not metrics:
            raise WatchError(f"evaluated(): unknown metric {', '.join(unknown) or '(none given)'}"
                             f"; use {', '.join(METRIC_KEYS)}")
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                  for k, v in metrics.items()}
        if step is None:
            if self._steps_done:
                raise WatchError("evaluated(None, ...) is the evaluation before training; "
                                 f"pass the step it followed (step {self._next - 1} is done)")
            self._initial.update(values)
            return
        if step != self._next - 1 or self._state != "ready":
            raise WatchError(f"evaluated({step}, ...): evaluate after after_step(step); the "
                             f"last step done is {self._next - 1 if self._steps_done else None}")
        self._final.update(values)
        tests = {k: v for k, v in values.items() if k.startswith("test_")}
        if not tests:
            return
        if self._row is None or self._row["step"] != step:
            self._flush_row()
            self._row = self._step_row([])
        self._row.update(tests)

    def close(self, status: str | None = None, error: str | None = None) -> Path:
        """Complete the record (status `completed`, or `diverged` after a NaN/Inf) and remove
        every hook. Harmless when called again. Returns the run directory."""
        if not self._closed:
            self._complete(status or "completed", error)
        return self.path

    def report(self, all_layers: bool = False, width: int = 80) -> str:
        """gradlab's report of this run, as `gradlab report RUN` prints it (plain text)."""
        import io

        from rich.console import Console

        from gradlab.record.reader import read_record
        from gradlab.render.report import run_report

        console = Console(width=width, file=io.StringIO(), color_system=None, record=True,
                          emoji=False)
        record = read_record(self.path)
        if not self._closed and record.summary is not None:  # the loop is running: its count
            record = dataclasses.replace(record, summary={
                **record.summary, "steps_done": self._steps_done, "seconds": self._seconds})
        console.print(run_report(record, all_layers))
        return console.export_text()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if self._closed:  # diverged, or a WatchError that completed the record already
            return isinstance(error, Diverged) and error.path == self.path
        if error is None:
            self.close()
        elif isinstance(error, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self._complete("failed", f"{type(error).__name__}: {error}",
                           "".join(traceback.format_exception(kind, error, tb)))
        return False

    # ------------------------------------------------------------ inside

    def _open(self, call: str) -> None:
        if self._closed:
            if self._error is not None:
                raise WatchError(f"{call}: this watch stopped: {self._error}")
            raise WatchError(f"{call}: this watch is closed (its record is {self.path})")

    def _fail(self, message: str) -> WatchError:
        """A misuse inside a step: the record is completed as failed, the error returned."""
        error = WatchError(message)
        self._error = error
        self._complete("failed", f"WatchError: {message}")
        return error

    def _loss_scale(self) -> torch.Tensor | None:
        """The scaler's current scale (on the device) while the gradients are still scaled."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return None
        if self.optimizer is not None:
            from torch.amp.grad_scaler import OptState

            state = scaler._per_optimizer_states.get(id(self.optimizer)) or {}
            if state.get("stage") in (OptState.UNSCALED, OptState.STEPPED):
                return None  # unscale_ already divided the gradients
        scale = scaler._get_scale_async()
        return None if scale is None else scale.detach().float()

    def _check_unchanged(self, step: int) -> None:
        if parameter_signature(self.model) != self._signature:
            raise self._fail(f"step {step}: the model's parameters changed after watch() "
                             "(a layer added, removed, replaced, frozen or unfrozen): watch "
                             "the model once it is built, or watch it again")

    def _row_order(self) -> list[int]:
        if self._order is None:
            order = self._probe.order()
            if self._steps_done == 0 and self._last is None:
                return order  # nothing has run yet: not final
            self._order = order
        return self._order

    def _owner_name(self, index: int) -> str:
        """The qualified name of the module owning the probe's row `index`."""
        owner = self._found[index].owner
        return next((display_name(n, m, self.model) for n, m in self.model.named_modules()
                     if m is owner), type(owner).__name__)

    def _step_row(self, rows: list[dict[str, Any]] | None) -> dict[str, Any]:
        """A metrics row for the last step, with its layer rows in the order the layers ran."""
        last = self._last or {}
        order = self._row_order()
        layer_rows = [] if not rows else [{**rows[j], "layer": k} for k, j in enumerate(order)]
        return {"step": last.get("step"), "loss": last.get("loss"), "lr": last.get("lr"),
                "grad_norm": last.get("grad_norm"), "_layers": layer_rows,
                "_time": self._probe.time_grads if rows else None}

    def _flush_row(self) -> None:
        if self._row is not None:
            row, self._row = self._row, None
            self._write_row(row)

    def _write_row(self, row: dict[str, Any]) -> None:
        layers = row.pop("_layers", [])
        self._writer.on_log(Logged(row["step"], row, layers, row.pop("_time", None)))

    def _complete(self, status: str, error: str | None = None, tb: str | None = None) -> None:
        """Write the last row, the summary and the verdicts; remove every hook."""
        if self._closed:
            return
        self._closed = True
        self._probe.close()
        self._sentinel.close()
        with uninterrupted():  # a Ctrl-C now must not leave the record half-finished
            try:
                self._flush_row()
            except Exception:  # noqa: BLE001  (the failure is the writer's to report)
                pass
            self._writer.close()
            if self.first_nonfinite is not None and status in ("completed", "diverged"):
                status = "diverged"
            elif status == "completed":
                status = self._check_weights(status)
            if tb:
                self._writer.write_traceback(tb)
            outcome = {"status": status, "error": error, "steps_done": self._steps_done,
                       "seconds": self._seconds or time.perf_counter() - self._started,
                       "initial": self._initial_metrics(), "final": self._final_metrics(status),
                       # the loop's own clipping (or a framework's) is seen only where it is
                       # by norm and the gradients are measured before it: else not measured
                       "clipped_steps": self._clipped if self._counts_clipping else None,
                       "clip": self._counts_clipping,
                       "first_nonfinite": self.first_nonfinite}
            base = {**self._base, "steps_planned": self.steps or self._steps_done}
            if self.scaler is not None:
                base["mixed_precision"] = {"overflowed_steps": self._overflows,
                                           "final_scale": self.scaler.get_scale()}
            if self.precision != "fp32":
                outcome["precision"] = self._precision()
            shapes = [list(self._found[i].layer.shape) for i in self._row_order()]
            summary = build_summary(self.path, base, outcome, shapes)
            summary["verdicts"] = custom_remedies(diagnose(summary, self.config), summary,
                                                  self._clip)
            self._writer.write_summary(summary)
            self.summary = summary
        self._writer.check()

    def _precision(self) -> dict[str, Any]:
        """summary.json `precision`'s inputs: the dtype's limits and the scaler's record."""
        scaling = self.scaler is not None and self.scaler.is_enabled()
        scale = float(self.scaler.get_scale()) if self.scaler is not None and scaling else None
        return {**precision_limits(self.precision),
                "loss_scale": ("dynamic" if scaling else "none") if self.precision == "fp16"
                else None,
                "skipped_steps": self._overflows, "scale_init": None, "scale_final": scale,
                "scale_min": None, "scale": []}

    def _check_weights(self, status: str) -> str:
        """The last update may have overflowed a weight: no later loss would show it."""
        order = self._row_order()
        finite = torch.stack([self._found[i].layer.weight.detach().isfinite().all()
                              for i in order]).tolist()
        bad = next((i for i, ok in zip(order, finite) if not ok), None)
        if bad is None or not self._steps_done:
            return status
        self.first_nonfinite = {"step": self._next - 1, "layer": self._found[bad].layer.name,
                                "what": "weights", "direction": None,
                                "module": self._owner_name(bad), "passed_on": [], "value": None}
        return "diverged"

    def _initial_metrics(self) -> dict[str, float]:
        if "train_loss" in self._initial or self._first_loss is None:
            return dict(self._initial)
        return {"train_loss": self._first_loss, **self._initial}

    def _final_metrics(self, status: str) -> dict[str, float]:
        if status not in ("completed", "interrupted"):
            return {}
        final = dict(self._final)
        losses = [v for v in self._losses if math.isfinite(v)]
        if "train_loss" not in final and losses:
            final["train_loss"] = sum(losses) / len(losses)
        return final


# ---------------------------------------------------------------- helpers


def _check_clip(clip: dict[str, Any] | None) -> dict[str, Any] | None:
    """`clip=` checked: one of max_norm / max_value (a positive number), `seen` before or after
    (before by default), nothing else."""
    if clip is None:
        return None
    if not isinstance(clip, dict):
        raise WatchError(f"clip: expected a mapping such as {{'max_norm': 1.0}}, got "
                         f"{type(clip).__name__}")
    unknown = set(clip) - {"max_norm", "max_value", "seen"}
    limits = [k for k in ("max_norm", "max_value") if k in clip]
    if unknown or len(limits) != 1:
        raise WatchError(f"clip: expected one of max_norm, max_value and optionally seen, got "
                         f"{sorted(clip)}")
    limit = clip[limits[0]]
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0 \
            or not math.isfinite(limit):
        raise WatchError(f"clip.{limits[0]}={limit!r}: expected a positive number")
    seen = clip.get("seen", "before")
    if seen not in ("before", "after"):
        raise WatchError(f"clip.seen={seen!r}: expected 'before' (after_backward is called "
                         "before the loop clips) or 'after'")
    return {"by": "norm" if limits[0] == "max_norm" else "value", limits[0]: float(limit),
            "seen": seen}


def _check_options(every: int, steps: int | None, start: int, on_nonfinite: str,
                   task: str | None) -> None:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise WatchError(f"every={every!r}: expected a whole number of steps, at least 1")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise WatchError(f"steps={steps!r}: expected the number of steps planned, at least 1")
    if not isinstance(start, int) or start < 0:
        raise WatchError(f"start={start!r}: expected the first step's number, 0 or more")
    if on_nonfinite not in ("raise", "record"):
        raise WatchError(f"on_nonfinite={on_nonfinite!r}: expected 'raise' or 'record'")
    if task not in (None, "classification", "regression"):
        raise WatchError(f"task={task!r}: expected 'classification' or 'regression'")


def _run_name(name: str | None, model: nn.Module) -> str:
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", type(model).__name__) or "model"
    if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
        raise WatchError(f"name={name!r}: a run name is letters, digits, '_', '.' or '-' "
                         "(at most 100, starting with a letter or digit)")
    return name


def _describe_model(name: str, model: nn.Module, found: list[Found], every: int,
                    activations: bool, optimizer: torch.optim.Optimizer | None,
                    through_time: str | None) -> dict[str, Any]:
    """config.yaml of a watched run: what is known of the model (not a config to rerun)."""
    kinds = [k for m in model.modules() if (k := activation_kind(m)) is not None]
    # the report shows saturated units for sigmoid/tanh nets, dead units otherwise
    activation = max(sorted(set(kinds)), key=kinds.count) if kinds else "relu"
    train: dict[str, Any] = {}
    if optimizer is not None:
        train = {"optimizer": type(optimizer).__name__.lower(),
                 "lr": optimizer.param_groups[0].get("lr")}
    return {
        "name": name, "source": "gradlab.watch",
        "model": {"kind": "custom", "class": type(model).__name__, "activation": activation,
                  "layers": [f.layer.name for f in found],
                  "norm": "present" if any(isinstance(m, NORMS) for m in model.modules())
                  else "none"},
        "train": train, "probe": {"every": every, "activations": activations,
                                  "through_time": through_time},
    }


NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
         nn.modules.instancenorm._InstanceNorm)

# What to try on a model gradlab did not build: remedies in words, not `--set` overrides.
REMEDIES: dict[str, list[str]] = {
    "vanishing": [
        "normalise each layer's input (nn.BatchNorm2d / nn.LayerNorm before the activation)",
        "add residual connections around blocks (x + f(x)) so the gradient has a short path",
        "initialise for the activation: nn.init.kaiming_normal_ for ReLU, xavier_normal_ for "
        "tanh/sigmoid",
        "use Adam: per-parameter step sizes rescale small gradients",
    ],
    "exploding": [
        "clip the gradient: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before "
        "optimizer.step()",
        "lower the learning rate",
        "initialise with a smaller scale (kaiming/xavier), or zero the last layer of each "
        "residual branch",
    ],
    "forward_signal": [
        "initialise for the activation (kaiming_normal_ for ReLU, xavier_normal_ for tanh)",
        "normalise each layer's input (BatchNorm / LayerNorm)",
    ],
    "saturated": [
        "normalise before the activation so the units leave their flat tails",
        "a non-saturating activation (ReLU, GELU) with kaiming init",
    ],
    "dead": [
        "LeakyReLU or GELU pass a gradient below 0",
        "lower the learning rate: a large step can push units off for good",
        "kaiming_normal_ init with zero biases",
    ],
    "precision": [
        "fp16: scale the loss with torch.amp.GradScaler (scaler.scale(loss).backward(), "
        "pass scaler= to watch)",
        "autocast in torch.bfloat16: float32's range, no loss scale needed",
        "clip the gradient (after scaler.unscale_(optimizer)) so weights and activations stay "
        "in range",
    ],
    "vanishing_time": [
        "for an nn.RNN: nn.LSTM or nn.GRU, whose gates keep a path back through time",
        "an LSTM's forget-gate bias at 1 (bias_ih_l0[hidden:2 * hidden] = 1, bias_hh_l0's "
        "slice 0) keeps 73% of the cell per step",
        "nn.init.orthogonal_ on each weight_hh: recurrent weights that preserve the norm",
    ],
    "exploding_time": [
        "clip the gradient: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before "
        "optimizer.step()",
        "nn.init.orthogonal_ on each weight_hh: a spectral radius of 1, not above",
    ],
    "not_learning": [
        "try other learning rates (×10 and ×0.1)",
        "use Adam (lr 1e-3)",
    ],
    "overfitting": [
        "weight decay (weight_decay=0.1 in the optimiser)",
        "more training data",
        "fewer steps: stop where the test loss stops falling",
    ],
}


def _callers_level() -> int:
    """The `stacklevel` of a warning that points at the first frame outside gradlab."""
    here, level = Path(__file__).parent, 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and Path(frame.f_code.co_filename).is_relative_to(here):
        level, frame = level + 1, frame.f_back
    return level


def custom_remedies(verdicts: list[dict[str, Any]], summary: dict[str, Any],
                    clip: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The verdicts with remedies for a user's own model: `--set` fixes name gradlab config
    keys, which a watched model does not have. Where the loop clips already (`clip`, as
    watch() was told), "clip the gradient" becomes a lower limit than its own."""
    out = []
    for given in verdicts:
        v = {**given, "fixes": []}
        if v["kind"] == "diverged" and summary.get("first_nonfinite"):
            where = summary["first_nonfinite"]
            v["message"] = describe(where)  # the producer, and who passed it on
            v["remedies"] = _divergence_remedies(where)
        elif v["remedies"]:  # none where the verdict points to its cause's remedies instead
            # in torch's words; other kinds keep the remedies not made from `--set` fixes
            # (failed's "see traceback.txt")
            settings = {describe_fix(f) for f in given["fixes"]}
            v["remedies"] = list(REMEDIES.get(v["kind"])
                                 or [r for r in v["remedies"] if r not in settings])
        if clip is not None:
            limit = f"{clip['by']} {clip.get('max_norm', clip.get('max_value')):g}"
            v["remedies"] = [f"the loop clips already ({limit}): clip lower, or lower the "
                             "learning rate" if r.startswith("clip the gradient") else r
                             for r in v["remedies"]]
        out.append(v)
    if not out and summary.get("status") == "completed" and summary.get("layers"):
        # not `ok`, which says the net learned: no baseline (or no evaluation), no judgement
        out.append({"kind": "gradients_ok", "severity": "info", "when": "end", "layers": [],
                    "message": gradient_reach(summary, "")
                               + "; whether the net learned is not judged (give watch() a "
                               "baseline_loss and report evaluated(step, test_loss=...))",
                    "remedies": [], "fixes": []})
    return out


def _divergence_remedies(where: dict[str, Any]) -> list[str]:
    module, what = where.get("module"), where.get("what")
    if what == "output" and module:
        return [f"{module} makes NaN/Inf from finite inputs: guard its log/sqrt/division "
                "(clamp the input, add an eps) or lower the learning rate if its inputs grew"]
    if what == "gradient" and module:
        return [f"{module}'s backward is NaN/Inf for finite gradients coming in: a sqrt, pow "
                "or division at 0 (add an eps), or a custom autograd.Function"]
    if what == "loss":
        return ["the loss is NaN/Inf from finite outputs: a log of 0? use a stable loss "
                "(F.cross_entropy on logits, BCEWithLogitsLoss)"]
    if what == "input":
        return ["the batch itself holds NaN/Inf: check the data pipeline"]
    return ["lower the learning rate",
            "clip the gradient: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)"]


def compare_runs(runs: Sequence[str | os.PathLike[str] | Watch], out: str | os.PathLike[str] = "runs",
                 plots: bool = True) -> Path:
    """A compare record (`runs/compare-<stamp>/`, as `gradlab compare` writes) of run records
    already on disk, watched or run: `gradlab report` on it prints the table, and with
    `plots` its loss and gradient-flow figures are drawn. Returns its directory."""
    from gradlab.compare import Variant, comparison_rows, write_record
    from gradlab.record.reader import is_run_dir, read_record
    from gradlab.render.compare_figures import plot_compare_record

    class Recorded(Variant):
        """A run record taken as a variant of a comparison: it has no config to run. Two
        records of one name (two watches of one model class) get distinct names, `NAME-2`,
        so that each row, link and curve is its own record's."""

        unique: str | None = None

        @property
        def name(self) -> str:
            if self.unique is not None:
                return self.unique
            summary = (self.record.summary if self.record else None) or {}
            return str(summary.get("name") or self.path.parent.name)

        @property
        def status(self) -> str:
            return self.record.status if self.record is not None else "incomplete"

    variants: list[Variant] = []
    for run in runs:
        path = Path(run.path if isinstance(run, Watch) else run)
        if not is_run_dir(path):
            raise WatchError(f"compare_runs: {path} is not a run directory")
        variants.append(Recorded(path, run_dir=path, record=read_record(path)))
    taken = {v.name for v in variants}
    seen: set[str] = set()
    for v in variants:
        if v.name in seen and isinstance(v, Recorded):
            k = 2
            while f"{v.name}-{k}" in taken:
                k += 1
            v.unique = f"{v.name}-{k}"
            taken.add(v.unique)
        seen.add(v.name)
    record = write_record(comparison_rows(variants), Path(out))
    plot_compare_record(record, draw=plots)
    return record


class _CallableModule(ModuleType):
    """`import gradlab.watch` binds the module where `gradlab.watch` (the function) was:
    calling the module calls the function, so `gradlab.watch(model)` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Watch:
        return watch(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
