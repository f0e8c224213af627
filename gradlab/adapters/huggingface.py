"""`GradlabCallback`: `gradlab.watch` on the model a `transformers.Trainer` trains.

```python
from gradlab.adapters.huggingface import GradlabCallback

probe = GradlabCallback(every=10, out="runs", name="my_bert")
trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                               eval_dataset=test, callbacks=[probe])
with probe:                  # optional: an exception completes the record as failed
    trainer.train()
print(probe.watch.report())  # or: gradlab report runs/my_bert/<stamp>
```

The hooks, in the Trainer's order for one optimizer step:

- `on_train_begin` (after a checkpoint is restored): `gradlab.watch` on the model, with the
  Trainer's optimizer, step number (`start`), the steps planned (`max_steps`) and precision;
  a forward hook on the model keeps each training micro-batch's `loss` output;
- `on_step_begin`: a new step (its micro-batches' losses start afresh);
- `on_pre_optimizer_step` (every micro-batch's backward done, gradients clipped to
  `max_grad_norm`, not yet stepped): `after_backward(step, loss)` with the mean of the
  micro-batches' losses;
- `on_optimizer_step` (right after `optimizer.step()`, before the scheduler and
  `zero_grad`): `after_step(step)`;
- `on_evaluate`: `evaluated(step, test_loss=eval_loss, test_accuracy=eval_accuracy)`
  (`metrics=` maps other names; `eval_on_start` gives the metrics before training);
- `on_train_end`: `close()`.

`TrainerCallback` has no hook for an exception: use the callback as a context manager around
`trainer.train()` (as above) and a raise completes the record as `failed` (traceback.txt), a
Ctrl-C as `interrupted`; without it such a record reads back as `incomplete`.

The Trainer clips before `on_pre_optimizer_step` (`max_grad_norm`, 1.0 by default): the rows
are then the clipped gradients the optimizer uses, every layer scaled by one factor when the
total norm was over the limit (their ratios, the vanishing/exploding profile, are unchanged;
the total is capped). With clipping on the callback warns once and the record says so
(config.yaml `train.clip` with `seen: after`; a line of the report's header); `max_grad_norm=0`
records the raw gradients.
A model that computes no `loss` itself (`compute_loss_func`, label smoothing) records no loss.
At the first NaN/Inf the record completes as `diverged` and `control.should_training_stop` is
set. Refused with a `gradlab.WatchError`: several processes or GPUs and `fp16` (an overflowed
step the scaler skips would read as a divergence); `bf16` is measured as bf16.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradlab.adapters._driver import Driven, Driver, metric_names
from gradlab.watch import WatchError

try:  # the framework: the extra's one import
    import transformers
except ModuleNotFoundError as e:
    raise ModuleNotFoundError("gradlab.adapters.huggingface needs transformers: pip install "
                              f"'gradlab[huggingface]' ({e})", name=e.name) from e

logger = logging.getLogger(__name__)

if not hasattr(transformers.TrainerCallback, "on_pre_optimizer_step"):  # added in 4.45
    raise ImportError(f"gradlab.adapters.huggingface needs transformers>=4.45 (its "
                      f"on_pre_optimizer_step hook); this is {transformers.__version__}")

EVAL_METRICS: dict[str, tuple[str, ...]] = {
    "test_loss": ("eval_loss",),
    "test_accuracy": ("eval_accuracy", "eval_acc"),
}


class GradlabCallback(Driven, transformers.TrainerCallback):
    """Watch the Trainer's model during `trainer.train()` (see the module docstring).

    options: passed to `gradlab.watch` (every, out, name, layers, on_nonfinite, activations,
        task, baseline_loss, baseline_accuracy).
    metrics: gradlab metric → the names `on_evaluate` gets for it, e.g.
        {"test_accuracy": "eval_f1"}; the first name present is taken.
    """

    def __init__(self, *, metrics: Mapping[str, str | Sequence[str]] | None = None,
                 **options: Any):
        self._driver = Driver(options, metric_names(metrics, EVAL_METRICS))
        self._losses: list[torch.Tensor] = []
        self._hook: RemovableHandle | None = None

    # ------------------------------------------------------------ the Trainer's hooks

    def on_train_begin(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                       control: transformers.TrainerControl, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        if args.world_size > 1 or args.n_gpu > 1:
            raise WatchError(f"GradlabCallback watches one process on one device; this Trainer "
                             f"runs {args.world_size} processes on {args.n_gpu} GPUs")
        if args.fp16:
            raise WatchError("GradlabCallback: fp16 is not supported (an overflowed step, which "
                             "the loss scaler skips, would read as a divergence); use bf16 or fp32")
        if model is None:
            raise WatchError("GradlabCallback: the Trainer gave on_train_begin no model")
        if args.max_grad_norm and args.max_grad_norm > 0:
            logger.warning("gradlab records the gradients after the Trainer clips them to "
                           "max_grad_norm=%s: every layer scaled alike, the total norm capped; "
                           "max_grad_norm=0 records them raw", args.max_grad_norm)
        inner = getattr(optimizer, "optimizer", None)  # accelerate's AcceleratedOptimizer
        optimizer = inner if isinstance(inner, torch.optim.Optimizer) else optimizer
        start = state.global_step
        steps = state.max_steps - start if state.max_steps and state.max_steps > 0 else None
        self._remove_hook()
        self._losses = []
        clip = ({"max_norm": float(args.max_grad_norm), "seen": "after"}
                if args.max_grad_norm and args.max_grad_norm > 0 else None)
        self._driver.start(model, optimizer=optimizer, start=start, steps=steps,
                           precision="bf16" if args.bf16 else "fp32", clip=clip)
        self._hook = model.register_forward_hook(self._keep_loss)

    def on_step_begin(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                      control: transformers.TrainerControl, **kwargs: Any) -> None:
        self._losses = []

    def on_pre_optimizer_step(self, args: transformers.TrainingArguments,
                              state: transformers.TrainerState,
                              control: transformers.TrainerControl, **kwargs: Any) -> None:
        losses, self._losses = self._losses, []
        loss = torch.stack(losses).mean() if losses else None
        if self._driver.before_step(loss):
            control.should_training_stop = True

    def on_optimizer_step(self, args: transformers.TrainingArguments,
                          state: transformers.TrainerState,
                          control: transformers.TrainerControl, **kwargs: Any) -> None:
        if self._driver.after_step():
            control.should_training_stop = True

    def on_evaluate(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                    control: transformers.TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        self._driver.evaluated(metrics or {})

    def on_train_end(self, args: transformers.TrainingArguments, state: transformers.TrainerState,
                     control: transformers.TrainerControl, **kwargs: Any) -> None:
        self.close()

    # ------------------------------------------------------------ the rest

    def close(self) -> None:
        """Complete the record (harmless when called again) and remove the loss hook."""
        self._remove_hook()
        self._driver.close()

    def __enter__(self) -> GradlabCallback:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._remove_hook()
        if error is not None:
            self._driver.failed(error)  # and the exception goes on
        else:
            self._driver.close()

    def _keep_loss(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled() and self._driver.active):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach().reshape(()))

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
