"""Per-layer statistics of gradients, weights, updates and activations, batched on the device.

A `Probe` watches the layers a builder declares (`build.probed`): forward hooks on each
layer's activation module (and a recurrent model's time-step tap) keep what they see on
logged training steps only. The loop calls `before_forward(step)`, then `after_backward(step)`
between backward and the optimiser step, and `after_step(step)` after it; on logged steps the
last returns one row per layer. All statistics for all layers are computed on the device and
fetched in a single transfer per logged step: never an `.item()` per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from gradlab.build.probed import ProbedLayer, TimeSteps
from gradlab.config.schema import RELU_FAMILY

# The statistics of one layer row, in the order they are stacked on the device.
STATS = (
    "grad_norm", "grad_rms", "grad_absmax", "weight_norm", "update_ratio",
    "act_mean", "act_std", "act_saturated", "act_dead",
)
COLUMN = {name: i for i, name in enumerate(STATS)}


class Probe:
    """Watches `layers` every `every` steps (and on `last_step`)."""

    def __init__(self, layers: list[ProbedLayer], *, every: int, last_step: int,
                 activation: str = "relu", activations: bool = True,
                 time: TimeSteps | None = None, enabled: bool = True):
        self.enabled = enabled
        self.layers = layers
        self.every = every
        self.last_step = last_step
        self.activation = activation
        self.time = time
        self._weights = [p.weight.detach() for p in layers]  # views: they follow the steps
        self._numel = torch.tensor([float(p.weight.numel()) for p in layers],
                                   device=layers[0].weight.device)
        self._armed = False  # capture in the forward pass now under way
        self._pending: torch.Tensor | None = None
        self._before: list[torch.Tensor] = []
        self._time_norms: torch.Tensor | None = None
        self._outputs: dict[int, torch.Tensor] = {}  # layer index → its activation (detached)
        self._state_grads: list[torch.Tensor | None] = []
        self._states = 0
        self.time_grads: list[float] | None = None  # ‖∂L/∂h_t‖ at the last logged step
        self._hooks: list[RemovableHandle] = []
        if enabled and activations:
            self._hooks += [layer.activation.register_forward_hook(self._keep_output(i))
                            for i, layer in enumerate(layers) if layer.activation is not None]
        if enabled and time is not None:
            self._hooks.append(time.tap.register_forward_hook(self._watch_state))

    def wants(self, step: int) -> bool:
        """Whether `step` is a logged step."""
        return self.enabled and (step % self.every == 0 or step == self.last_step)

    def before_forward(self, step: int) -> None:
        """Capture in the coming forward pass if `step` is logged (unrolling a recurrent top)."""
        self._armed = self.wants(step)
        self._outputs, self._state_grads, self._states = {}, [], 0
        if self.time is not None and self.enabled:
            self.time.unroll(self._armed)

    def close(self) -> None:
        """Remove every hook and leave a recurrent model fused: the model is as it was given."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._armed = False
        self._outputs, self._state_grads = {}, []
        if self.time is not None:
            self.time.unroll(False)

    def _capturing(self) -> bool:
        # evaluation runs under no_grad: it never overwrites a training step's capture
        return self._armed and torch.is_grad_enabled()

    def _keep_output(self, i: int) -> Callable[[torch.nn.Module, Any, torch.Tensor], None]:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._capturing():
                self._outputs[i] = output.detach()

        return hook

    def _watch_state(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """h_t passed the tap: keep ‖∂L/∂h_t‖'s tensor when backward reaches it."""
        if not self._capturing() or not output.requires_grad:
            return
        t = self._states
        self._states += 1
        self._state_grads.append(None)

        def keep(grad: torch.Tensor) -> None:
            # a copy: autograd may reuse the buffer it hands a hook once the hook returns
            self._state_grads[t] = grad.detach().clone()

        output.register_hook(keep)

    def after_backward(self, step: int) -> None:
        """Gradient and weight statistics for every layer, kept on the device."""
        if not self.wants(step):
            return
        self._armed = False
        weights = self._weights
        grads = [p.weight.grad if p.weight.grad is not None else torch.zeros_like(p.weight)
                 for p in self.layers]
        grad_norm = torch.stack(torch._foreach_norm(grads))
        # max |g| from one aminmax pass per layer: _foreach_norm(·, inf) is ~10x slower on the
        # CPU, and |g| materialised first costs two more passes over every gradient
        low, high = zip(*(torch.aminmax(g) for g in grads))
        grad_absmax = torch.maximum(torch.stack(high), -torch.stack(low))
        weight_norm = torch.stack(torch._foreach_norm(weights))
        grad_rms = grad_norm / self._numel.sqrt()
        self._before = [w.clone() for w in weights]  # for the update ratio
        columns = {"grad_norm": grad_norm, "grad_rms": grad_rms, "grad_absmax": grad_absmax,
                   "weight_norm": weight_norm, "update_ratio": grad_norm * math.nan,
                   **self._activation_stats()}
        self._time_norms = self._time_grad_norms()
        self._outputs = {}
        self._pending = torch.stack([columns[name] for name in STATS], dim=1)  # (layers, stats)

    def after_step(self, step: int) -> list[dict[str, Any]] | None:
        """Add update-to-weight ratios and fetch the step's rows (one transfer)."""
        if self._pending is None:
            return None
        torch._foreach_sub_(self._before, self._weights)  # in place: the copies are not needed again
        update = torch.stack(torch._foreach_norm(self._before))
        stats = self._pending
        weight_norm = stats[:, COLUMN["weight_norm"]]
        stats[:, COLUMN["update_ratio"]] = update / weight_norm.clamp_min(1e-30)
        return self._fetch(step, stats)

    def flush(self, step: int) -> list[dict[str, Any]] | None:
        """Fetch a logged step's rows when no optimiser step followed (a diverged run)."""
        if self._pending is None:
            return None
        return self._fetch(step, self._pending)

    def _fetch(self, step: int, stats: torch.Tensor) -> list[dict[str, Any]]:
        flat = stats.flatten()
        if self._time_norms is not None:
            flat = torch.cat([flat, self._time_norms])
        fetched = flat.cpu().tolist()  # note: the one CPU-GPU sync point of a logged step
        n = stats.numel()
        values = [fetched[i:i + stats.shape[1]] for i in range(0, n, stats.shape[1])]
        self.time_grads = fetched[n:] if self._time_norms is not None else None
        self._pending, self._before, self._time_norms = None, [], None
        self._state_grads = []
        return [
            {"step": step, "layer": i, "name": layer.name, **dict(zip(STATS, row))}
            for i, (layer, row) in enumerate(zip(self.layers, values))
        ]

    def _time_grad_norms(self) -> torch.Tensor | None:
        """‖∂L/∂h_t‖ for every time step the tap saw in this step's forward pass."""
        if not self._state_grads:
            return None
        zero = torch.zeros((), device=self._numel.device)
        grads = [g if g is not None else zero for g in self._state_grads]
        return torch.stack(torch._foreach_norm(grads))  # (time,)

    def _activation_stats(self) -> dict[str, torch.Tensor]:
        """Mean, std, saturated and dead fractions of each watched layer's output (NaN where
        a layer has no activation of its own, such as the head, or none was captured)."""
        n = len(self.layers)
        nan = torch.full((n,), math.nan, device=self._numel.device)
        names = ("act_mean", "act_std", "act_saturated", "act_dead")
        empty = {name: nan for name in names}
        watched = sorted(self._outputs)
        captured = [self._outputs[i] for i in watched]
        if not captured or any(h.shape != captured[0].shape for h in captured):
            return empty
        h = torch.stack(captured)  # (watched layers, batch, width)
        h = h.reshape(h.shape[0], h.shape[1], -1)
        # Reductions run over one contiguous dimension: on the CPU, reducing over (1, 2) and
        # torch.std are several times slower, and this runs on every logged step.
        flat = h.reshape(h.shape[0], -1)  # (watched layers, batch · width)
        count = h.shape[0]
        mean = flat.mean(dim=1)
        std = ((flat - mean[:, None]).pow(2).sum(dim=1) / max(1, flat.shape[1] - 1)).sqrt()
        if self.activation == "sigmoid":
            saturated = ((flat < 0.01) | (flat > 0.99)).float().mean(dim=1)
        elif self.activation == "tanh":
            saturated = (flat.abs() > 0.99).float().mean(dim=1)
        else:
            saturated = nan[:count]
        if self.activation in RELU_FAMILY:
            # units off for the whole batch; max ≤ 0 is (h ≤ 0).all() at a tenth of the cost
            dead = (h.amax(dim=1) <= 0).float().mean(dim=1)
        else:
            dead = nan[:count]
        index = torch.tensor(watched, device=nan.device)
        out = {}
        for name, column in zip(names, (mean, std, saturated, dead)):
            full = nan.clone()
            full[index] = column
            out[name] = full
        return out
