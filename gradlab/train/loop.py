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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradlab.build.dataset import Dataset
from gradlab.build.optim import Loss, build_optimizer, loss_function, lr_at
from gradlab.build.probed import Built, ProbedLayer
from gradlab.config import ClipConfig, Config
from gradlab.train.events import Evaluated, Logged, Observers, StepEnd
from gradlab.train.probe import Probe


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss,
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


@dataclass(frozen=True)
class Measured:
    """One step's loss and gradient norms, fetched in one sync; the norm clipping compares."""

    loss: float
    grad_norm: float
    clipped: bool
    clip_norm: torch.Tensor  # on the device, for clip_grads_with_norm_

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def measure_step(loss: torch.Tensor, params: Sequence[torch.Tensor],
                 clip: ClipConfig | None) -> Measured:
    """The step's loss, total gradient 2-norm and whether clipping will fire, gradients untouched.

    note: the one CPU sync of an unlogged step; it is also where divergence is detected.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads)
    if clip is None:
        measured, fires = total, torch.zeros((), device=total.device)
    elif clip.by == "norm":
        measured = total if clip.norm_type == 2 else nn.utils.get_total_norm(grads, clip.norm_type)
        fires = (measured > clip.max_norm).float()
    else:
        measured = nn.utils.get_total_norm(grads, math.inf)
        fires = (measured > clip.max_value).float()
    loss_v, norm_v, clipped_v = torch.stack([loss.detach(), total, fires]).tolist()
    return Measured(loss_v, norm_v, bool(clipped_v), measured)


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
    device = data.x_train.device
    order = batches(len(data.x_train), t.batch_size, cfg.seed, device)
    result = TrainResult()
    started = time.perf_counter()
    try:
        # a model that does not fit its data fails here, and that is a result too
        result.initial = evaluate_splits(model, data, loss_fn)
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
                result.first_nonfinite = (_where_nonfinite_weights(step - 1, layers)
                                          or _where_nonfinite(step, m.loss, layers))
                tell.on_log(_logged(step, lr, m, probe.flush(step), None, probe.time_grads))
                break

            # clip, optimiser step, then update-to-weight ratios
            clip_gradients(params, t.clip, m)
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
            if rows is not None or evaluated is not None:
                tell.on_log(_logged(step, lr, m, rows, evaluated,
                                    probe.time_grads if rows is not None else None))
            tell.on_step_end(StepEnd(step, steps, m.loss, m.grad_norm))

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
    finally:
        probe.close()
    result.seconds = time.perf_counter() - started
    try:
        if result.status in ("completed", "interrupted"):
            result.final = evaluate_splits(model, data, loss_fn)
    except KeyboardInterrupt:  # a second Ctrl-C skips the final evaluation, keeps the rest
        result.status = "interrupted"
    return result


def evaluate_splits(model: nn.Module, data: Dataset, loss_fn: Loss) -> dict[str, float]:
    """Both splits evaluated: train_loss, train_accuracy, test_loss, test_accuracy."""
    train = evaluate(model, data.x_train, data.y_train, loss_fn, data.task)
    test = evaluate(model, data.x_test, data.y_test, loss_fn, data.task)
    return {**{f"train_{k}": v for k, v in train.items()},
            **{f"test_{k}": v for k, v in test.items()}}


def _logged(step: int, lr: float, m: Measured, rows: list[dict[str, Any]] | None,
            evaluated: dict[str, float] | None, time_grads: list[float] | None) -> Logged:
    metrics: dict[str, Any] = {"step": step, "loss": m.loss, "lr": lr, "grad_norm": m.grad_norm,
                               "clipped": int(m.clipped), **(evaluated or {})}
    return Logged(step, metrics, rows or [], time_grads)


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
