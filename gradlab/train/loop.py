"""The training loop: learning rate → forward → backward → probe → clip → step → log → evaluate.

`train(cfg, built, data, steps, observers)` runs one variant and returns a `TrainResult`; it
prints nothing and tells its observers what happens (`events`). Divergence (NaN/Inf) is a
result: the loop stops there and says where. `measure_step` and `batches` are shared with
layer-wise pretraining.

Mixed precision (`train.precision` bf16/fp16): the forward passes (training, evaluation, the
replay of a diverged step) run under `torch.autocast`; fp16 scales the loss with
`torch.amp.GradScaler` unless `train.loss_scale: none`, and a step whose scaled gradients
overflowed is skipped by the scaler (not a divergence, unless AMP_PATIENCE come in a row). On
logged steps the probed weights' gradients of the same batch are taken once more in float32
(`reference_grads`), for the probe's count of entries lost to underflow.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradlab.build.dataset import Dataset
from gradlab.build.discover import display_name
from gradlab.build.optim import Loss, build_optimizer, loss_function, lr_at
from gradlab.build.probed import Built, ProbedLayer
from gradlab.config import ClipConfig, Config
from gradlab.train.events import Evaluated, Logged, Observers, StepEnd
from gradlab.train.probe import F64, LOW_PRECISION, Probe
from gradlab.train.sentinel import Sentinel


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss,
             task: str, keep_mode: bool = False) -> dict[str, float]:
    """Loss (and accuracy for classification) over a whole split, in eval mode (or in the
    modes the modules are in, with `keep_mode`)."""
    was_training = model.training
    if not keep_mode:
        model.eval()
    total, correct, count = 0.0, 0.0, 0
    for i in range(0, len(x), 4096):
        out, target = model(x[i:i + 4096]), y[i:i + 4096]
        total += float(loss_fn(out, target)) * len(target)
        if task == "classification":
            correct += float((out.argmax(dim=-1) == target).float().mean()) * len(target)
        count += len(target)
    if not keep_mode:
        model.train(was_training)
    metrics = {"loss": total / count}
    if task == "classification":
        metrics["accuracy"] = correct / count
    return metrics


def batches(n: int, batch_size: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Endless minibatch indices: a fresh seeded permutation each epoch, last partial batch dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)
    while True:
        order = torch.randperm(n, generator=gen).to(device)
        for b in range(per_epoch):
            yield order[b * batch_size:(b + 1) * batch_size]


@dataclass(frozen=True)
class Measured:
    """One step's loss and gradient norms, fetched in one sync; the norm clipping compares."""

    loss: float
    grad_norm: float
    clipped: bool  # clipping will fire (it runs only if the step is finite)
    clip_norm: torch.Tensor  # on the device, for clip_grads_with_norm_
    # each parameter's gradient 2-norm (the parts of the total norm), left on the device:
    # fetched only if the run diverges soon after (`_before_divergence`); None when a
    # parameter had no gradient
    norms: torch.Tensor | None = None

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


# A float32 total norm below this may have lost entries whose squares underflowed (entries
# under ~1e-19 square to below the smallest float32); it is recomputed in float64.
TINY_NORM = 1e-10


def total_norm(grads: Sequence[torch.Tensor], norm_type: float = 2.0,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The norm of all gradients together, as `clip_grad_norm_` measures it."""
    if norm_type == math.inf:
        return torch.stack([g.abs().max() for g in grads]).max().to(dtype or grads[0].dtype)
    per_tensor = torch._foreach_norm(list(grads), norm_type, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack(per_tensor), norm_type)


def measure_step(loss: torch.Tensor, params: Sequence[torch.Tensor],
                 clip: ClipConfig | None) -> Measured:
    """The step's loss, total gradient 2-norm and whether clipping will fire, gradients untouched.

    note: the one CPU sync of an unlogged step; it is also where divergence is detected. The
    float32 norm is exact enough unless it overflowed with every entry finite, or is so small
    that squares may have underflowed: then it is measured again in float64 (a second sync, on
    such steps only), so a huge but finite gradient is not taken for a divergence.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        zero = loss.detach().new_zeros(())
        return Measured(float(loss.detach()), 0.0, False, zero)
    parts = torch.stack(torch._foreach_norm(grads, 2.0))  # total_norm(grads), its parts kept
    total = torch.linalg.vector_norm(parts, 2.0)
    p = 2.0 if clip is None or clip.by == "value" else clip.norm_type
    measured = total if p == 2.0 else total_norm(grads, p)
    if clip is None:
        fires = torch.zeros((), device=total.device)
    elif clip.by == "norm":
        fires = (measured > clip.max_norm).float()
    else:
        measured = total_norm(grads, math.inf)
        fires = (measured > clip.max_value).float()
    loss_v, norm_v, clipped_v, measured_v = torch.stack(
        [loss.detach().float(), total.float(), fires, measured.float()]).tolist()
    if math.isfinite(loss_v) and not (math.isfinite(norm_v) and math.isfinite(measured_v)
                                      and norm_v >= TINY_NORM):
        parts = torch.stack(torch._foreach_norm(grads, 2.0, dtype=F64))
        total = torch.linalg.vector_norm(parts, 2.0)
        measured = total if p == 2.0 else total_norm(grads, p, F64)
        if clip is not None and clip.by == "norm":
            fires = (measured > clip.max_norm).float()
        norm_v, clipped_v = torch.stack([total, fires.to(F64)]).tolist()
    return Measured(loss_v, norm_v, bool(clipped_v) and math.isfinite(norm_v), measured,
                    parts if len(grads) == len(params) else None)


def clip_gradients(params: Sequence[torch.Tensor], clip: ClipConfig | None,
                   measured: Measured) -> None:
    """Clip finite gradients as configured, reusing the norm already measured."""
    if clip is None:
        return
    if clip.by == "norm":
        nn.utils.clip_grads_with_norm_(params, clip.max_norm, measured.clip_norm)
    else:
        nn.utils.clip_grad_value_(params, clip.max_value)


@dataclass
class TrainResult:
    status: str = "completed"  # completed | diverged | interrupted | failed
    steps_done: int = 0
    seconds: float = 0.0
    error: str | None = None
    first_nonfinite: dict[str, Any] | None = None
    initial: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    clipped_steps: int = 0
    traceback: str | None = None
    # bf16/fp16 runs: dtype, its limits, the loss scale and what the grad scaler did
    precision: dict[str, Any] | None = None


# fp16 with a loss scale: this many overflowed steps in a row is a divergence, not loss scaling
# (GradScaler halves its scale at each: from 2**16 to below 1 takes 17)
AMP_PATIENCE = 24
SCALE_HISTORY = 200  # at most this many (step, scale) changes kept for the summary


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The forward pass's precision context: autocast in bf16/fp16, nothing in fp32."""
    dtype = LOW_PRECISION.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_limits(precision: str) -> dict[str, Any]:
    """A low precision's name and range, as the summary records them."""
    info = torch.finfo(LOW_PRECISION[precision])
    return {"dtype": precision, "max": float(info.max), "tiny": float(info.tiny),
            "smallest": float(info.tiny * info.eps)}  # the smallest subnormal


def reference_grads(model: nn.Module, layers: list[ProbedLayer],
                    batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Loss
                    ) -> list[torch.Tensor | None]:
    """The probed weights' gradients of `batch` in float32 (autocast off), `.grad` untouched;
    batch norm's running statistics are restored, so the run goes on as if it never ran."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [[b.clone() for b in m.buffers()] for m in norms]
    try:
        with torch.autocast(batch[0].device.type, enabled=False):
            loss = loss_fn(model(batch[0]), batch[1])
        weights = [layer.weight for layer in layers]
        return list(torch.autograd.grad(loss, weights, allow_unused=True))
    finally:
        with torch.no_grad():
            for m, buffers in zip(norms, saved):
                for b, kept in zip(m.buffers(), buffers):
                    b.copy_(kept)


def train(cfg: Config, built: Built, data: Dataset, steps: int,
          observers: Observers | None = None) -> TrainResult:
    """Train `built.model` for `steps` optimiser steps, probing its declared layers; never
    raises for a run's failure."""
    t = cfg.train
    tell = observers or Observers()
    model, layers = built.model, built.layers
    loss_fn = loss_function(t.loss, data.task, data.n_out)
    optimizer = build_optimizer(model.parameters(), t)
    probe = Probe(layers, every=cfg.probe.every, last_step=steps - 1,
                  activations=cfg.probe.activations, time=built.time,
                  enabled=cfg.probe.enabled, precision=t.precision)
    # the first-NaN sentinel: keeps each training forward's inputs, replays one if it diverges
    sentinel = Sentinel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    device = data.x_train.device
    low = t.precision != "fp32"
    precise = autocast(t.precision, device)  # re-entered for every forward pass
    amp = _Amp(device, t.precision, t.loss_scale) if low else None
    # the steps since the last logged one: written out if the run diverges before the next
    recent: deque[tuple[int, float, Measured]] = deque(maxlen=RECENT_STEPS)
    order = batches(len(data.x_train), t.batch_size, cfg.seed, device)
    result = TrainResult()
    started = time.perf_counter()
    try:
        # a model that does not fit its data fails here, and that is a result too
        with precise:
            result.initial = initial_evaluation(model, data, loss_fn)
        tell.on_eval_end(Evaluated(None, result.initial))
        started = time.perf_counter()  # seconds count training steps, not the first evaluation
        model.train()
        for step in range(steps):
            # learning rate from the schedule (a pure function of the step)
            lr = lr_at(step, t, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # forward on the next minibatch
            idx = next(order)
            probe.before_forward(step)
            with precise:
                loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])

            # backward, then the probe reads the raw gradients
            optimizer.zero_grad(set_to_none=True)
            if amp is None:
                loss.backward()
            else:  # mixed precision: the loss scaled (fp16), the gradients unscaled for the probe
                amp.backward(loss, optimizer, probe)
            probe.after_backward(step)
            if low and probe.wants(step):  # entries lost to underflow: float32 on the same batch
                sentinel.paused = True  # the sentinel keeps the training forward, not this one
                try:
                    probe.underflow(reference_grads(model, layers, (data.x_train[idx],
                                                                    data.y_train[idx]), loss_fn))
                finally:
                    sentinel.paused = False

            # measure the gradients; clipping waits until they are known to be finite
            m = measure_step(loss, params, t.clip)
            # the scaled gradients overflowed: the scaler skips the step and lowers its scale
            skipped = amp is not None and amp.skips(m)
            # a NaN/Inf gradient stops the run before it is clipped: clipping would hide it
            # (an infinite norm scales every gradient to 0, a NaN norm makes them all NaN)
            if not m.finite and not skipped:
                result.status = "diverged"
                # weights the previous update overflowed show here first, as a NaN/Inf loss
                result.first_nonfinite = (
                    _where_nonfinite_weights(step - 1, layers)
                    or where_nonfinite(step, m.loss, sentinel, model, layers, precise,
                                       amp.scale() if amp is not None else None))
                _before_divergence(recent, layers if probe.enabled else [], params, tell)
                tell.on_log(_logged(step, lr, m, probe.flush(step), None, probe.time_grads))
                break

            # clip, optimiser step, then update-to-weight ratios
            if not skipped:
                clip_gradients(params, t.clip, m)
            if t.clip is not None and not skipped:  # the norm the step used, with the rows
                probe.fetch_with("grad_norm_clipped", total_norm(
                    [p.grad for p in params if p.grad is not None], 2.0, F64))
            if amp is None:
                optimizer.step()
            else:
                amp.step(optimizer, step, skipped, probe)
            result.steps_done += 1
            result.clipped_steps += int(m.clipped)
            rows = probe.after_step(step)
            if amp is not None and rows is not None:
                amp.logged(step, probe.scalars)

            # log and evaluate
            evaluated = None
            if (step + 1) % t.eval_every == 0 or step == steps - 1:
                with precise:
                    test = evaluate(model, data.x_test, data.y_test, loss_fn, data.task)
                evaluated = {f"test_{k}": v for k, v in test.items()}
                tell.on_eval_end(Evaluated(step, evaluated))
            # weights that overflowed in the step show as a non-finite update ratio
            bad = next((r for r in rows or [] if r["update_ratio"] is not None
                        and not math.isfinite(r["update_ratio"])), None)
            if rows is not None or evaluated is not None:
                if bad is not None:
                    _before_divergence(recent, layers if probe.enabled else [], params, tell)
                tell.on_log(_logged(step, lr, m, rows, evaluated,
                                    probe.time_grads if rows is not None else None,
                                    probe.scalars if rows is not None else {}))
                recent.clear()
            else:
                recent.append((step, lr, m))
            tell.on_step_end(StepEnd(step, steps, m.loss, m.grad_norm))

            if bad is not None:
                result.status = "diverged"
                result.first_nonfinite = {"step": step, "layer": bad["name"], "what": "weights"}
                break
        overflowed = _where_nonfinite_weights(steps - 1, layers) if result.status == "completed" \
            else None
        if overflowed:  # the last update overflowed a weight: no later loss would show it
            result.status, result.first_nonfinite = "diverged", overflowed
    except KeyboardInterrupt:
        result.status = "interrupted"
    except Exception as e:  # a failed run is recorded, not lost
        result.status = "failed"
        result.error = f"{type(e).__name__}: {e}"
        result.traceback = traceback.format_exc()
    finally:
        probe.close()
        sentinel.close()
        if amp is not None:
            result.precision = amp.summary(t.precision, t.loss_scale)
    result.seconds = time.perf_counter() - started
    try:
        if result.status in ("completed", "interrupted"):
            with precise:
                result.final = evaluate_splits(model, data, loss_fn)
    except KeyboardInterrupt:  # a second Ctrl-C skips the final evaluation, keeps the rest
        result.status = "interrupted"
    return result


class _Amp:
    """A mixed-precision run's loss scaling: the grad scaler (fp16 with `loss_scale:
    dynamic`), the steps it skipped, and its scale over time (read with the probe's rows on
    logged steps, and after a skipped step)."""

    def __init__(self, device: torch.device, precision: str, loss_scale: str):
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16"
                                           and loss_scale == "dynamic")
        self.scaling = self.scaler.is_enabled()
        self.skipped, self.in_a_row = 0, 0
        self.history: list[list[float]] = []  # [step, scale after its update] where it changed
        self._last: float | None = None

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 probe: Probe) -> None:
        if not self.scaling:
            loss.backward()
            return
        self.scaler.scale(loss).backward()
        probe.set_loss_scale(self.scaler._get_scale_async())  # ∂L/∂z_l were read scaled
        self.scaler.unscale_(optimizer)  # the probe and clipping see the true gradients

    def scale(self) -> torch.Tensor | None:
        """The loss scale this step's backward ran with (None without a grad scaler)."""
        return self.scaler._get_scale_async() if self.scaling else None

    def skips(self, m: Measured) -> bool:
        """Whether the scaler skips this step: its scaled gradients overflowed, the loss is
        finite, and fewer than AMP_PATIENCE steps in a row did so."""
        if m.finite or not self.scaling or not math.isfinite(m.loss):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.skipped += self.in_a_row < AMP_PATIENCE
        return self.in_a_row < AMP_PATIENCE

    def step(self, optimizer: torch.optim.Optimizer, step: int, skipped: bool,
             probe: Probe) -> None:
        if not self.scaling:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # no update when the gradients overflowed
        self.scaler.update()
        scale = self.scaler._get_scale_async()
        if scale is None:
            return
        if skipped:  # note: a sync, on a skipped step only
            self._note(step, float(scale))
        else:
            probe.fetch_with("grad_scale", scale)

    def logged(self, step: int, scalars: dict[str, float]) -> None:
        if "grad_scale" in scalars:
            self._note(step, scalars["grad_scale"])

    def _note(self, step: int, value: float) -> None:
        if value != self._last and len(self.history) < SCALE_HISTORY:
            self.history.append([step, value])
        self._last = value

    def summary(self, precision: str, loss_scale: str) -> dict[str, Any]:
        scales = [v for _, v in self.history]
        final = float(self.scaler.get_scale()) if self.scaling else None
        return {**precision_limits(precision),
                "loss_scale": loss_scale if precision == "fp16" else None,
                "skipped_steps": self.skipped,
                "scale_init": float(self.scaler._init_scale) if self.scaling else None,
                "scale_final": final,
                "scale_min": min([*scales, final]) if final is not None else None,
                "scale": self.history}


# Unlogged steps kept for a divergence: with `probe.every` up to this, every step since the
# last logged one is written when the run diverges (else the last RECENT_STEPS of them).
RECENT_STEPS = 100


def _before_divergence(recent: deque[tuple[int, float, Measured]], layers: list[ProbedLayer],
                       params: Sequence[torch.Tensor], tell: Observers) -> None:
    """Log the unlogged steps that led to a divergence: their loss and total gradient norm,
    and each probed layer's gradient norm (the parts of the total norm the loop measured on
    every step anyway; so a run that does not diverge pays nothing for this).

    The layer norms were summed in float32: below TINY_NORM (squares may have underflowed) or
    infinite while the step's total was finite (a square overflowed), a norm is not
    trustworthy and is written as not measured. Other statistics are not measured there.
    With no `layers` (probing off) only the metrics rows are written.
    """
    at = {id(p): i for i, p in enumerate(params)}
    index = [at.get(id(layer.weight)) for layer in layers]
    kept = [(step, lr, m) for step, lr, m in recent if m.norms is not None]
    recent.clear()
    if not kept:
        return
    # note: one sync, once per run
    fetched = torch.stack([m.norms.to(F64) for _, _, m in kept if m.norms is not None]).tolist()
    for (step, lr, m), norms in zip(kept, fetched):
        rows = []
        for i, (layer, k) in enumerate(zip(layers, index)):
            g = norms[k] if k is not None else None
            if g is not None and not (TINY_NORM <= g < math.inf):
                g = None
            rows.append({"step": step, "layer": i, "name": layer.name, "grad_norm": g,
                         "grad_rms": g / math.sqrt(layer.weight.numel()) if g is not None
                         else None})
        tell.on_log(_logged(step, lr, m, rows, None, None))


def evaluate_splits(model: nn.Module, data: Dataset, loss_fn: Loss,
                    keep_mode: bool = False) -> dict[str, float]:
    """Both splits evaluated: train_loss, train_accuracy, test_loss, test_accuracy."""
    train = evaluate(model, data.x_train, data.y_train, loss_fn, data.task, keep_mode)
    test = evaluate(model, data.x_test, data.y_test, loss_fn, data.task, keep_mode)
    return {**{f"train_{k}": v for k, v in train.items()},
            **{f"test_{k}": v for k, v in test.items()}}


def _logged(step: int, lr: float, m: Measured, rows: list[dict[str, Any]] | None,
            evaluated: dict[str, float] | None, time_grads: list[float] | None,
            scalars: dict[str, float] | None = None) -> Logged:
    metrics: dict[str, Any] = {"step": step, "loss": m.loss, "lr": lr, "grad_norm": m.grad_norm,
                               "clipped": int(m.clipped), **(scalars or {}), **(evaluated or {})}
    return Logged(step, metrics, rows or [], time_grads)


def initial_evaluation(model: nn.Module, data: Dataset, loss_fn: Loss) -> dict[str, float]:
    """Both splits before the first step. Batch norm has no running statistics yet (mean 0,
    variance 1: a deep net's eval-mode loss can read 1e18), so it normalises with each
    evaluated batch's own statistics, and its buffers are restored afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return evaluate_splits(model, data, loss_fn)
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    was_training = model.training
    try:
        model.eval()
        for m in norms:
            m.train()
        return evaluate_splits(model, data, loss_fn, keep_mode=True)
    finally:
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
        model.train(was_training)


def where_nonfinite(step: int, loss: float, sentinel: Sentinel, model: nn.Module,
                    layers: list[ProbedLayer],
                    precise: contextlib.AbstractContextManager[Any] | None = None,
                    scale: torch.Tensor | None = None) -> dict[str, Any]:
    """Where NaN/Inf appeared first, in `direction` forward or backward: the first-NaN sentinel
    (`train.sentinel`, as `gradlab.watch` has it) replays the step in the run's precision and
    names the module that *produced* it (`module`) and those that passed it on; `layer` is the
    probed layer that module belongs to (its Linear, or its activation: `what` "activations"),
    None for a module outside them (or the loss)."""
    with precise or contextlib.nullcontext():  # in the run's precision: fp16 overflows again
        where = sentinel.locate(loss_finite=math.isfinite(loss), scale=scale, loss=loss)
    named = {display_name(name, module, model): module for name, module in model.named_modules()}
    module = named.get(where.get("module") or "")
    layer, what = None, where["what"]
    for probed in layers:
        if module is not None and module is probed.module:
            layer = probed.name
        elif module is not None and module is probed.activation:
            layer, what = probed.name, "activations" if what == "output" else what
    return {"step": step, "layer": layer, "what": what, "direction": where["direction"],
            "module": where.get("module"), "passed_on": where.get("passed_on") or [],
            "value": where.get("value")}


def _where_nonfinite_weights(step: int, layers: list[ProbedLayer]) -> dict[str, Any] | None:
    """The probed layer nearest the input whose weights went NaN/Inf in `step`'s update, if any."""
    finite = torch.stack([p.weight.detach().isfinite().all() for p in layers]).tolist()
    bad = [p.name for p, ok in zip(layers, finite) if not ok]
    return {"step": step, "layer": bad[0], "what": "weights"} if bad and step >= 0 else None
