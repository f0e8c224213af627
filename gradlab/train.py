"""The training loop: learning rate → forward → backward → probe → clip → step → log → evaluate.

`train(...)` runs one variant and returns a `TrainResult`; it prints nothing. Observers are
plain objects; the loop calls whichever of `on_step_end`, `on_log` and `on_eval_end` they
define. Divergence (NaN/Inf) is a result: the loop stops there and says where.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.config import Config, TrainConfig
from gradlab.data import Dataset
from gradlab.models import ProbedLayer
from gradlab.probe import Probe

OPTIMIZERS: dict[str, Callable[[Any, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, t: torch.optim.SGD(p, t.lr, momentum=t.momentum, nesterov=t.nesterov,
                                        weight_decay=t.weight_decay),
    "adam": lambda p, t: torch.optim.Adam(p, t.lr, betas=t.betas, eps=t.eps,
                                          weight_decay=t.weight_decay),
    "adamw": lambda p, t: torch.optim.AdamW(p, t.lr, betas=t.betas, eps=t.eps,
                                            weight_decay=t.weight_decay),
    "rmsprop": lambda p, t: torch.optim.RMSprop(p, t.lr, alpha=t.alpha, eps=t.eps,
                                                momentum=t.momentum, weight_decay=t.weight_decay),
    "adagrad": lambda p, t: torch.optim.Adagrad(p, t.lr, eps=t.eps, weight_decay=t.weight_decay),
}


def build_optimizer(params: Any, t: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[t.optimizer](params, t)


def lr_at(step: int, t: TrainConfig, total: int) -> float:
    """The learning rate at `step`: linear warmup, then the schedule."""
    if step < t.schedule.warmup_steps:
        return t.lr * (step + 1) / t.schedule.warmup_steps
    s = t.schedule
    k = step - s.warmup_steps
    if s.name == "step":
        return t.lr * s.gamma ** (k // s.step_size)
    if s.name == "exponential":
        return t.lr * s.gamma ** (k / s.step_size)
    if s.name == "cosine":
        span = max(1, total - s.warmup_steps)
        return s.min_lr + (t.lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(k, span) / span))
    return t.lr


def loss_function(name: str, task: str, n_out: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """mse or cross_entropy (`auto` picks by task); sequence outputs are flattened over time."""
    if name == "auto":
        name = "mse" if task == "regression" else "cross_entropy"
    if name == "cross_entropy":
        return lambda out, y: F.cross_entropy(out.reshape(-1, n_out), y.reshape(-1))
    if task == "classification":  # mse against one-hot targets
        return lambda out, y: F.mse_loss(out, F.one_hot(y, n_out).to(out.dtype))
    return lambda out, y: F.mse_loss(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             task: str) -> dict[str, float]:
    """Loss (and accuracy for classification) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0.0, 0
    for i in range(0, len(x), 4096):
        out, target = model(x[i:i + 4096]), y[i:i + 4096]
        total += float(loss_fn(out, target)) * len(target)
        if task == "classification":
            correct += float((out.argmax(dim=-1) == target).float().mean()) * len(target)
        count += len(target)
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


def train(cfg: Config, model: nn.Module, layers: list[ProbedLayer], data: Dataset,
          steps: int, observers: tuple[Any, ...] = ()) -> TrainResult:
    """Train `model` for `steps` optimiser steps, probing `layers`; never raises for a run's failure."""
    t = cfg.train
    loss_fn = loss_function(t.loss, data.task, data.n_out)
    optimizer = build_optimizer(model.parameters(), t)
    probe = Probe(layers, cfg.probe.every, steps - 1, cfg.model.activation,
                  cfg.probe.activations, model, cfg.probe.enabled)
    params = [p for p in model.parameters() if p.requires_grad]
    device = data.x_train.device
    order = batches(len(data.x_train), t.batch_size, cfg.seed, device)
    result = TrainResult()
    started = time.perf_counter()
    try:
        # a model that does not fit its data fails here, and that is a result too
        result.initial = _eval_all(model, data, loss_fn)
        _call(observers, "on_eval_end", 0, result.initial)
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
            total_norm, measured, clipped = _measure(params, t)
            # note: the one CPU sync of an unlogged step; it also detects divergence
            loss_v, norm_v, clipped_v = torch.stack([loss.detach(), total_norm, clipped]).tolist()
            # a NaN/Inf gradient stops the run before it is clipped: clipping would hide it
            # (an infinite norm scales every gradient to 0, a NaN norm makes them all NaN)
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                result.status = "diverged"
                # weights the previous update overflowed show here first, as a NaN/Inf loss
                result.first_nonfinite = (_where_nonfinite_weights(step - 1, layers)
                                          or _where_nonfinite(step, loss_v, layers))
                _log(observers, step, lr, loss_v, norm_v, bool(clipped_v), probe.flush(step), None,
                     probe.time_grads)
                break

            # clip, optimiser step, then update-to-weight ratios
            _clip(params, t, measured)
            optimizer.step()
            result.steps_done += 1
            result.clipped_steps += int(clipped_v)
            rows = probe.after_step(step)

            # log and evaluate
            evaluated = None
            if (step + 1) % t.eval_every == 0 or step == steps - 1:
                evaluated = evaluate(model, data.x_test, data.y_test, loss_fn, data.task)
                _call(observers, "on_eval_end", step + 1, evaluated)
            if rows is not None or evaluated is not None:
                _log(observers, step, lr, loss_v, norm_v, bool(clipped_v), rows, evaluated,
                     probe.time_grads if rows is not None else None)
            _call(observers, "on_step_end", step, steps, loss_v, norm_v)

            # weights that overflowed in the step show as a non-finite update ratio
            if rows is not None and not all(math.isfinite(r["update_ratio"]) for r in rows):
                bad = next(r for r in rows if not math.isfinite(r["update_ratio"]))
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
    result.seconds = time.perf_counter() - started
    try:
        if result.status in ("completed", "interrupted"):
            result.final = _eval_all(model, data, loss_fn)
    except KeyboardInterrupt:  # a second Ctrl-C skips the final evaluation, keeps the rest
        result.status = "interrupted"
    return result


def _eval_all(model: nn.Module, data: Dataset, loss_fn: Any) -> dict[str, float]:
    train = evaluate(model, data.x_train, data.y_train, loss_fn, data.task)
    test = evaluate(model, data.x_test, data.y_test, loss_fn, data.task)
    return {**{f"train_{k}": v for k, v in train.items()},
            **{f"test_{k}": v for k, v in test.items()}}


def _measure(params: Sequence[torch.Tensor],
             t: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total 2-norm, the norm clipping compares, whether clipping will fire), gradients untouched."""
    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads)
    if t.clip is None:
        return total, total, torch.zeros((), device=total.device)
    if t.clip.by == "norm":
        measured = total if t.clip.norm_type == 2 else nn.utils.get_total_norm(grads, t.clip.norm_type)
        return total, measured, (measured > t.clip.max_norm).float()
    absmax = nn.utils.get_total_norm(grads, math.inf)
    return total, absmax, (absmax > t.clip.max_value).float()


def _clip(params: Sequence[torch.Tensor], t: TrainConfig, measured: torch.Tensor) -> None:
    """Clip finite gradients as configured, reusing the norm already measured."""
    if t.clip is None:
        return
    if t.clip.by == "norm":
        nn.utils.clip_grads_with_norm_(params, t.clip.max_norm, measured)
    else:
        nn.utils.clip_grad_value_(params, t.clip.max_value)


def _where_nonfinite(step: int, loss: float, layers: list[ProbedLayer]) -> dict[str, Any]:
    """Where NaN/Inf appeared: the loss or a gradient, and the first probed layer whose gradient
    went non-finite in backprop order (the one nearest the output), if any did."""
    grads = [p.weight.grad for p in layers]
    yes = torch.tensor(True, device=layers[0].weight.device)
    finite = torch.stack([g.isfinite().all() if g is not None else yes
                          for g in grads]).tolist()  # note: one sync, once per run
    bad = [p.name for p, ok in zip(layers, finite) if not ok]
    # finite gradients whose total norm overflows float32 are reported as the norm
    what = "loss" if not math.isfinite(loss) else ("gradient" if bad else "gradient norm")
    return {"step": step, "layer": bad[-1] if bad else None, "what": what}


def _where_nonfinite_weights(step: int, layers: list[ProbedLayer]) -> dict[str, Any] | None:
    """The probed layer nearest the input whose weights went NaN/Inf in `step`'s update, if any."""
    finite = torch.stack([p.weight.detach().isfinite().all() for p in layers]).tolist()
    bad = [p.name for p, ok in zip(layers, finite) if not ok]
    return {"step": step, "layer": bad[0], "what": "weights"} if bad and step >= 0 else None


def _log(observers: tuple[Any, ...], step: int, lr: float, loss: float, grad_norm: float,
         clipped: bool, rows: list[dict[str, float]] | None, evaluated: dict[str, float] | None,
         time_grads: list[float] | None = None) -> None:
    metrics: dict[str, Any] = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                               "clipped": int(clipped)}
    if time_grads is not None:
        metrics["time_grads"] = time_grads
    for key, value in (evaluated or {}).items():
        metrics[f"test_{key}"] = value
    _call(observers, "on_log", step, metrics, rows or [])


def _call(observers: tuple[Any, ...], hook: str, *args: Any) -> None:
    for obs in observers:
        method = getattr(obs, hook, None)
        if method is not None:
            method(*args)
