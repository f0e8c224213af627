"""The probe on a model gradlab did not build: `ModuleProbe`, a `Probe` fed by discovery.

It is the trainer's `Probe` (the same statistics, the same float64 norms, the same single
transfer per logged step) with three additions a foreign model needs:

- **activations found as the model runs**: an activation module (ReLU, GELU, Tanh, …, see
  `build.discover.ACTIVATION_KINDS`) that runs right after a watched layer's module is that
  layer's activation for this forward pass, whatever the order the modules were registered in
  and even when one activation module is shared by several layers;
- **statistics taken at once**: an activation's mean, std, saturated and dead fractions are
  computed (on the device, in float64) inside its forward hook, so a later in-place change
  (`ReLU(inplace=True)`, `x += shortcut`) cannot alter them, and layers of any shapes mix;
  ∂L/∂z_l is read by a tensor hook registered on z_l before any in-place op runs;
- **the order the layers run in**: `order()` gives the rows in the order their modules first
  ran (registration order is not execution order, e.g. in a Pre-LN Transformer block).

Attention modules return tuples: their first element is taken as z_l.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gradlab.build.discover import Found, activation_kind
from gradlab.config.schema import DYING, SATURATING
from gradlab.train.probe import ACTIVATION_STATS, COLUMN, F64, Hook, Probe


def first_tensor(output: Any) -> torch.Tensor | None:
    """A module's main output: itself, or the first tensor of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output \
        if isinstance(output, (tuple, list)) else ()
    return next((o for o in items if isinstance(o, torch.Tensor)), None)


def activation_row(h: torch.Tensor, kind: str | None) -> torch.Tensor:
    """(mean, std, saturated, dead) of one activation, float64 on its device; NaN where the
    statistic does not apply to `kind`. Units are the entries of one example."""
    flat = h.detach().reshape(h.shape[0], -1) if h.dim() > 1 else h.detach().reshape(1, -1)
    f = flat.to(F64)
    mean = f.mean()
    std = ((f - mean).pow(2).sum() / max(1, f.numel() - 1)).sqrt()
    nan = torch.full((), math.nan, dtype=F64, device=f.device)
    if kind == "sigmoid":
        saturated = ((f < 0.01) | (f > 0.99)).to(F64).mean()
    elif kind == "tanh":
        saturated = (f.abs() > 0.99).to(F64).mean()
    else:
        saturated = nan
    # a unit is dead when it is off for the whole batch
    dead = (flat.amax(dim=0) <= 0).to(F64).mean() if kind in DYING else nan
    return torch.stack([mean, std, saturated, dead])


class ModuleProbe(Probe):
    """A `Probe` over discovered rows of `model` (see the module docstring)."""

    def __init__(self, found: list[Found], model: nn.Module, *, every: int, last_step: int,
                 activations: bool = True):
        self._act: dict[int, torch.Tensor] = {}  # row → (mean, std, saturated, dead)
        self._act_kind: dict[int, str | None] = {}
        self._static = {i: activation_kind(f.layer.activation) for i, f in enumerate(found)
                        if f.layer.activation is not None}
        self._last_row: int | None = None  # the watched row whose module ran last
        self._first_run: dict[int, int] = {}  # owner index → when it first ran
        self._ordering = True
        super().__init__([f.layer for f in found], every=every, last_step=last_step,
                         activation="", activations=activations)
        # Module hooks are attached only for the forward passes that need them (a logged
        # step's, and the first, which gives the order): an unlogged step runs the model
        # without any, so the probe costs nothing there.
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        plan: list[tuple[nn.Module, Hook]] = []
        for i, layer in enumerate(self.layers):
            if activations and layer.activation is not None:
                plan.append((layer.activation, self._keep_output(i)))
            if layer.module is not None:
                plan.append((layer.module, self._watch_z(i)))
        owners: list[nn.Module] = []
        rows_of: list[list[int]] = []
        for i, f in enumerate(found):
            if f.owner not in owners:
                owners.append(f.owner)
                rows_of.append([])
            rows_of[owners.index(f.owner)].append(i)
        self._rows_of = rows_of
        plan += [(owner, self._ran(k, rows_of[k][-1])) for k, owner in enumerate(owners)]
        static = {id(f.layer.activation) for f in found if f.layer.activation is not None}
        if activations:
            for module in model.modules():
                kind = activation_kind(module)
                if kind is not None and id(module) not in static:
                    plan.append((module, self._follows(kind)))
        plan.append((model, self._forward_done))
        self._plan = plan
        self._model = model
        self._attach()

    def order(self) -> list[int]:
        """Row indices in the order their modules first ran (rows never run last)."""
        never = len(self._rows_of)
        keyed = sorted(range(len(self._rows_of)), key=lambda k: (self._first_run.get(k, never), k))
        return [i for k in keyed for i in self._rows_of[k]]

    def before_forward(self, step: int) -> None:
        super().before_forward(step)
        self._act, self._act_kind, self._last_row = {}, {}, None
        if self._armed or self._ordering:
            self._attach()
        else:
            self._detach()

    def after_backward(self, step: int) -> None:
        kinds = dict(self._act_kind)
        super().after_backward(step)
        if self.wants(step):
            n = len(self.layers)
            self._measured["act_saturated"] = [kinds.get(i, "") in SATURATING for i in range(n)]
            self._measured["act_dead"] = [kinds.get(i, "") in DYING for i in range(n)]
        self._act, self._act_kind, self._last_row = {}, {}, None
        # the order is known once a step has run, and the tensor hooks on z_l have fired:
        # the module hooks can go until the next logged step
        self._ordering = False
        self._detach()

    def close(self) -> None:
        super().close()
        self._detach()

    def unscale(self, scale: torch.Tensor) -> None:
        """Divide this logged step's gradient statistics by a loss scale (mixed precision:
        the gradients read were those of `scale` × the loss), on the device."""
        if self._pending is not None:
            for name in ("grad_norm", "grad_rms", "grad_absmax", "delta_norm"):
                self._pending[:, COLUMN[name]] /= scale.to(F64)

    def _attach(self) -> None:
        if self._hooks:
            return
        self._hooks = [module.register_forward_hook(hook) for module, hook in self._plan]
        self._hooks.append(self._model.register_forward_pre_hook(self._new_forward))

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # ------------------------------------------------------------ hooks

    def _new_forward(self, module: nn.Module, inputs: Any) -> None:
        if self._capturing():  # the last forward pass before backward is the one measured
            self._act, self._act_kind, self._last_row = {}, {}, None

    def _forward_done(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._ordering = False

    def _ran(self, k: int, row: int) -> Hook:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._ordering and k not in self._first_run:
                self._first_run[k] = len(self._first_run)
            self._last_row = row

        return hook

    def _follows(self, kind: str) -> Hook:
        """An activation module: its output is the activation of the row that ran just before."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            row = self._last_row
            self._last_row = None
            if (row is None or row in self._act or row in self._static
                    or not self._capturing() or not isinstance(output, torch.Tensor)
                    or output.numel() == 0):
                return
            self._act[row] = activation_row(output, kind)
            self._act_kind[row] = kind

        return hook

    def _keep_output(self, i: int) -> Hook:
        """A declared activation module (`ProbedLayer.activation`): statistics at once."""
        kind = self._static.get(i)

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._capturing() and isinstance(output, torch.Tensor) and output.numel():
                self._act[i] = activation_row(output, kind)
                self._act_kind[i] = kind

        return hook

    def _watch_z(self, i: int) -> Hook:
        watch = super()._watch_z(i)

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            watch(module, inputs, first_tensor(output))

        return hook

    def _activation_stats(self) -> tuple[dict[str, torch.Tensor], list[bool]]:
        n = len(self.layers)
        if not self._act:
            return {name: self._nan for name in ACTIVATION_STATS}, [False] * n
        index = sorted(self._act)
        block = torch.full((n, len(ACTIVATION_STATS)), math.nan, dtype=F64,
                           device=self._nan.device)
        block[torch.tensor(index, device=block.device)] = torch.stack(
            [self._act[i].to(block.device) for i in index])
        columns = {name: block[:, k] for k, name in enumerate(ACTIVATION_STATS)}
        return columns, [i in self._act for i in range(n)]
