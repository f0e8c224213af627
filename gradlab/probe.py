"""Per-layer statistics of gradients, weights, updates and activations, batched on the device.

The trainer calls `probe.after_backward(step)` between backward and the optimiser step and
`probe.after_step(step)` after it; on logged steps the second returns one row per probed
layer. All statistics for all layers are computed on the device and fetched in a single
transfer per logged step: never an `.item()` per layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradlab.config import RELU_FAMILY
from gradlab.models import ProbedLayer

STATS = (
    "grad_norm", "grad_rms", "grad_absmax", "weight_norm", "update_ratio",
    "act_mean", "act_std", "act_saturated", "act_dead",
)


class Probe:
    """Watches `layers` every `every` steps (and on `last_step`)."""

    def __init__(self, layers: list[ProbedLayer], every: int, last_step: int,
                 activation: str = "relu", activations: bool = True, model: object = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.layers = layers
        self.every = every
        self.last_step = last_step
        self.activation = activation
        self.activations = activations and hasattr(model, "captured")
        self.model = model
        self._weights = [p.weight.detach() for p in layers]  # views: they follow the steps
        self._numel = torch.tensor([float(p.weight.numel()) for p in layers],
                                   device=layers[0].weight.device)
        self._pending: torch.Tensor | None = None
        self._before: list[torch.Tensor] = []
        self._time: torch.Tensor | None = None
        self.time_grads: list[float] | None = None  # ‖∂L/∂h_t‖ at the last logged step

    def wants(self, step: int) -> bool:
        """Whether `step` is a logged step."""
        return self.enabled and (step % self.every == 0 or step == self.last_step)

    def before_forward(self, step: int) -> None:
        """Ask the model to keep its hidden activations (and states over time) on logged steps."""
        if hasattr(self.model, "capture"):
            self.model.capture = self.wants(step)  # type: ignore[union-attr]

    def after_backward(self, step: int) -> None:
        """Gradient and weight statistics for every layer, kept on the device."""
        if not self.wants(step):
            return
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
        acts = self._activation_stats()
        self._time = self._time_grad_norms()
        self._pending = torch.stack([grad_norm, grad_rms, grad_absmax, weight_norm]
                                    + [grad_norm * math.nan] + acts, dim=1)  # (layers, stats)

    def after_step(self, step: int) -> list[dict[str, Any]] | None:
        """Add update-to-weight ratios and fetch the step's rows (one transfer)."""
        if self._pending is None:
            return None
        torch._foreach_sub_(self._before, self._weights)  # in place: the copies are not needed again
        update = torch.stack(torch._foreach_norm(self._before))
        stats = self._pending
        stats[:, 4] = update / stats[:, 3].clamp_min(1e-30)
        return self._fetch(step, stats)

    def flush(self, step: int) -> list[dict[str, Any]] | None:
        """Fetch a logged step's rows when no optimiser step followed (a diverged run)."""
        if self._pending is None:
            return None
        return self._fetch(step, self._pending)

    def _fetch(self, step: int, stats: torch.Tensor) -> list[dict[str, Any]]:
        flat = stats.flatten()
        if self._time is not None:
            flat = torch.cat([flat, self._time])
        fetched = flat.cpu().tolist()  # note: the one CPU-GPU sync point of a logged step
        n = stats.numel()
        values = [fetched[i:i + stats.shape[1]] for i in range(0, n, stats.shape[1])]
        self.time_grads = fetched[n:] if self._time is not None else None
        self._pending, self._before, self._time = None, [], None
        return [
            {"step": step, "layer": i, "name": layer.name, **dict(zip(STATS, row))}
            for i, (layer, row) in enumerate(zip(self.layers, values))
        ]

    def _time_grad_norms(self) -> torch.Tensor | None:
        """‖∂L/∂h_t‖ for every time step of a recurrent model that kept its states."""
        states = getattr(self.model, "time_states", None)
        if not states:
            return None
        grads = [h.grad if h.grad is not None else torch.zeros_like(h) for h in states]
        return torch.stack(torch._foreach_norm(grads))  # (time,)

    def _activation_stats(self) -> list[torch.Tensor]:
        """Mean, std, saturated and dead fractions of each hidden layer's output."""
        n = len(self.layers)
        nan = torch.full((n,), math.nan, device=self._numel.device)
        captured = getattr(self.model, "captured", None) if self.activations else None
        if not captured or any(h.shape != captured[0].shape for h in captured):
            return [nan, nan, nan, nan]
        h = torch.stack([c.detach() for c in captured])  # (hidden layers, batch, width)
        h = h.reshape(h.shape[0], h.shape[1], -1)
        # Reductions run over one contiguous dimension: on the CPU, reducing over (1, 2) and
        # torch.std are several times slower, and this runs on every logged step.
        flat = h.reshape(h.shape[0], -1)  # (hidden layers, batch · width)
        mean = flat.mean(dim=1)
        std = ((flat - mean[:, None]).pow(2).sum(dim=1) / max(1, flat.shape[1] - 1)).sqrt()
        if self.activation == "sigmoid":
            saturated = ((flat < 0.01) | (flat > 0.99)).float().mean(dim=1)
        elif self.activation == "tanh":
            saturated = (flat.abs() > 0.99).float().mean(dim=1)
        else:
            saturated = nan[: h.shape[0]]
        if self.activation in RELU_FAMILY:
            # units off for the whole batch; max ≤ 0 is (h ≤ 0).all() at a tenth of the cost
            dead = (h.amax(dim=1) <= 0).float().mean(dim=1)
        else:
            dead = nan[: h.shape[0]]
        pad = nan[: n - h.shape[0]]  # the head has no activation of its own
        cols = [mean, std, saturated, dead]
        return [torch.cat([c, pad]) for c in cols]
