"""The training loop: learning rate → forward → backward → probe → clip → step → log → evaluate.

`train(cfg, built, data, steps, observers)` runs one variant and returns a `TrainResult`; it
prints nothing and tells its observers what happens (`events`). Divergence (NaN/Inf) is a
result: the loop stops there and says where. `measure_step` and `batches` are shared with
layer-wise pretraining.
"""

from __future__ import annotations

import math
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradlab.build.dataset import Dataset
from gradlab.build.optim import Loss, build_optimizer, loss_function, lr_at
from gradlab.build.probed import Built, ProbedLayer
from gradlab.config import ClipConfig, Config
from gradlab.train.events import Evaluated, Logged, Observers, StepEnd
from gradlab.train.probe import F64, Probe


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
                  activation=cfg.model.activation, activations=cfg.probe.activations,
                  time=built.time, enabled=cfg.probe.enabled)
    params = [p for p in model.parameters() if p.requires_grad]
    # the steps since the last logged one: written out if the run diverges before the next
    recent: deque[tuple[int, float, Measured]] = deque(maxlen=RECENT_STEPS)
    device = data.x_train.device
    order = batches(len(data.x_train), t.batch_size, cfg.seed, device)
    result = TrainResult()
    started = time.perf_counter()
    try:
        # a model that does not fit its data fails here, and that is a result too
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
            loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])

            # backward, then the probe reads the raw gradients
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            probe.after_backward(step)

            # measure the gradients; clipping waits until they are known to be finite
            m = measure_step(loss, params, t.clip)
            # a NaN/Inf gradient stops the run before it is clipped: clipping would hide it
            # (an infinite norm scales every gradient to 0, a NaN norm makes them all NaN)
            if not m.finite:
                result.status = "diverged"
                # weights the previous update overflowed show here first, as a NaN/Inf loss
                result.first_nonfinite = (
                    _where_nonfinite_weights(step - 1, layers)
                    or where_nonfinite(step, m.loss, model, layers,
                                       (data.x_train[idx], data.y_train[idx]), loss_fn))
                _before_divergence(recent, layers if probe.enabled else [], params, tell)
                tell.on_log(_logged(step, lr, m, probe.flush(step), None, probe.time_grads))
                break

            # clip, optimiser step, then update-to-weight ratios
            clip_gradients(params, t.clip, m)
            if t.clip is not None:  # the norm the step used, fetched with the probe's rows
                probe.fetch_with("grad_norm_clipped", total_norm(
                    [p.grad for p in params if p.grad is not None], 2.0, F64))
            optimizer.step()
            result.steps_done += 1
            result.clipped_steps += int(m.clipped)
            rows = probe.after_step(step)

            # log and evaluate
            evaluated = None
            if (step + 1) % t.eval_every == 0 or step == steps - 1:
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
    result.seconds = time.perf_counter() - started
    try:
        if result.status in ("completed", "interrupted"):
            result.final = evaluate_splits(model, data, loss_fn)
    except KeyboardInterrupt:  # a second Ctrl-C skips the final evaluation, keeps the rest
        result.status = "interrupted"
    return result


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


def where_nonfinite(step: int, loss: float, model: nn.Module, layers: list[ProbedLayer],
                    batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Loss) -> dict[str, Any]:
    """Where NaN/Inf appeared first, in `direction` forward or backward.

    Forward: the step's batch is run once more, watching each probed layer's output z_l and
    activation in the order they are computed; the first non-finite one *produced* it (the
    layers after it only passed it on). Failing that, the loss itself (say, a log of 0).
    Backward: the probed layer nearest the output whose gradient entries are non-finite.
    """
    forward = _first_nonfinite_forward(model, layers, lambda: loss_fn(model(batch[0]), batch[1]))
    if forward is not None:
        layer, what = forward
        return {"step": step, "layer": layer, "what": what, "direction": "forward"}
    if not math.isfinite(loss):
        return {"step": step, "layer": None, "what": "loss", "direction": "forward"}
    grads = [p.weight.grad for p in layers]
    yes = torch.tensor(True, device=layers[0].weight.device)
    finite = torch.stack([g.isfinite().all() if g is not None else yes
                          for g in grads]).tolist()  # note: one sync, once per run
    bad = [p.name for p, ok in zip(layers, finite) if not ok]
    return {"step": step, "layer": bad[-1] if bad else None, "what": "gradient",
            "direction": "backward"}


@torch.no_grad()
def _first_nonfinite_forward(model: nn.Module, layers: list[ProbedLayer],
                             replay: Callable[[], torch.Tensor]) -> tuple[str, str] | None:
    """(layer, "output" or "activations") of the first probed module whose forward output is
    NaN/Inf when the batch is replayed, in the order the modules ran; None if all are finite."""
    seen: list[tuple[str, str, torch.Tensor]] = []

    def watch(name: str, what: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                seen.append((name, what, output.isfinite().all()))
        return hook

    handles = []
    for layer in layers:
        if layer.module is not None:
            handles.append(layer.module.register_forward_hook(watch(layer.name, "output")))
        if layer.activation is not None:
            handles.append(layer.activation.register_forward_hook(watch(layer.name,
                                                                        "activations")))
    try:
        replay()
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None
    finite = torch.stack([ok for _, _, ok in seen]).tolist()  # note: one sync, once per run
    return next(((name, what) for (name, what, _), ok in zip(seen, finite) if not ok), None)


def _where_nonfinite_weights(step: int, layers: list[ProbedLayer]) -> dict[str, Any] | None:
    """The probed layer nearest the input whose weights went NaN/Inf in `step`'s update, if any."""
    finite = torch.stack([p.weight.detach().isfinite().all() for p in layers]).tolist()
    bad = [p.name for p, ok in zip(layers, finite) if not ok]
    return {"step": step, "layer": bad[0], "what": "weights"} if bad and step >= 0 else None
