"""`GradlabCallback`: `gradlab.watch` on a LightningModule trained by `lightning.pytorch.Trainer`.

```python
from gradlab.adapters.lightning import GradlabCallback

probe = GradlabCallback(every=10, out="runs", name="my_module")
trainer = lightning.pytorch.Trainer(max_steps=1000, callbacks=[probe])
trainer.fit(module, train_loader, val_loader)
print(probe.watch.report())            # or: gradlab report runs/my_module/<stamp>
```

The hooks, in Lightning's order for one optimizer step:

- `on_train_start` (after a checkpoint is restored, before the first batch): `gradlab.watch`
  on the LightningModule (or its `module=` attribute), with the trainer's optimizer, its step
  number (`start`), the steps still planned and its precision;
- `on_before_backward`: the loss of each micro-batch, as Lightning backpropagates it (divided
  by `accumulate_grad_batches`; their sum is the loss whose gradient the step uses);
- `on_before_optimizer_step` (every micro-batch's backward done, gradients unscaled, not yet
  clipped): `after_backward(step, loss)`;
- `on_train_batch_end` (the optimizer has stepped): `after_step(step)`;
- `on_validation_end` (not the sanity check): `evaluated(step, test_loss=..., ...)` from
  `trainer.callback_metrics` (`val_loss`, `val_acc`/`val_accuracy` unless `metrics=` says);
- `on_exception`: the record completes as `failed` (traceback.txt), or `interrupted` for
  Ctrl-C; `on_train_end`/`on_fit_end`: `close()`.

At the first NaN/Inf the record completes as `diverged` and `trainer.should_stop` is set
(training stops after that batch; `min_steps`/`min_epochs` can keep it going, unwatched).
Refused with a `gradlab.WatchError`: several devices or processes (DDP, FSDP, ...), more than
one optimizer, and precisions other than 32/64-true and bf16-mixed (with 16-mixed an
overflowed step, which the scaler skips, would read as a divergence).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradlab.adapters._driver import Driven, Driver, metric_names
from gradlab.watch import WatchError

try:  # the framework: the extra's one import
    import lightning.pytorch as pl
except ModuleNotFoundError as e:
    raise ModuleNotFoundError("gradlab.adapters.lightning needs Lightning: pip install "
                              f"'gradlab[lightning]' ({e})", name=e.name) from e

VALIDATION_METRICS: dict[str, tuple[str, ...]] = {
    "test_loss": ("val_loss", "val/loss"),
    "test_accuracy": ("val_acc", "val_accuracy", "val/acc", "val/accuracy"),
}
PRECISIONS = {"32-true": "fp32", "32": "fp32", "64-true": "fp32", "64": "fp32",
              "bf16-mixed": "bf16"}


class GradlabCallback(Driven, pl.Callback):
    """Watch the LightningModule's layers during `trainer.fit` (see the module docstring).

    options: passed to `gradlab.watch` (every, out, name, layers, on_nonfinite, activations,
        task, baseline_loss, baseline_accuracy).
    module: the attribute of the LightningModule to watch (e.g. "net", "model.encoder"),
        instead of the LightningModule itself.
    metrics: gradlab metric → the names logged for it in validation, e.g.
        {"test_loss": "valid/loss"}; the first name present is taken.
    """

    def __init__(self, *, module: str | None = None,
                 metrics: Mapping[str, str | Sequence[str]] | None = None, **options: Any):
        super().__init__()
        self.module = module
        self._driver = Driver(options, metric_names(metrics, VALIDATION_METRICS))
        self._loss: torch.Tensor | None = None

    # ------------------------------------------------------------ Lightning's hooks

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise WatchError(f"GradlabCallback watches one process on one device; this trainer "
                             f"runs {trainer.world_size} (strategy "
                             f"{type(trainer.strategy).__name__})")
        if len(trainer.optimizers) != 1:
            raise WatchError(f"GradlabCallback watches a module with one optimizer; "
                             f"configure_optimizers gave {len(trainer.optimizers)}")
        precision = PRECISIONS.get(str(trainer.precision))
        if precision is None:
            raise WatchError(f"GradlabCallback: precision={trainer.precision!r} is not supported "
                             f"(use one of {', '.join(PRECISIONS)}): with a loss scaler an "
                             "overflowed step would read as a divergence")
        model = self._target(pl_module)
        planned = trainer.estimated_stepping_batches
        steps = int(planned) - trainer.global_step if math.isfinite(planned) else None
        self._loss = None
        value = trainer.gradient_clip_val
        clip = None  # Lightning clips after on_before_optimizer_step: the norms are seen before
        if value is not None and float(value) > 0:
            by = str(trainer.gradient_clip_algorithm or "norm")
            clip = {"max_norm" if by == "norm" else "max_value": float(value), "seen": "before"}
        self._driver.start(model, optimizer=trainer.optimizers[0], start=trainer.global_step,
                           steps=steps, precision=precision, clip=clip)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           loss: torch.Tensor) -> None:
        if self._driver.active:
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        loss, self._loss = self._loss, None
        if self._driver.before_step(loss):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._driver.after_step():
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._driver.evaluated(trainer.callback_metrics)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._driver.failed(exception)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._driver.close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._driver.close()

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            model = functools.reduce(getattr, self.module.split("."), pl_module)
        except AttributeError:
            raise WatchError(f"GradlabCallback(module={self.module!r}): "
                             f"{type(pl_module).__name__} has no such attribute") from None
        if not isinstance(model, nn.Module):
            raise WatchError(f"GradlabCallback(module={self.module!r}) is a "
                             f"{type(model).__name__}, not an nn.Module")
        return model
