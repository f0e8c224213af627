"""Per-layer statistics of gradients, weights, updates, the backward signal and activations,
batched on the device: the one probe of gradlab's trainer and of `gradlab.watch`.

A `Probe` watches declared layers (`build.probed.ProbedLayer`: from a builder, or found by
`build.discover` in any model): forward hooks on each layer's module (whose output z_l gets a
tensor hook for ∂L/∂z_l) and activation module, and on a recurrent model's time-step tap, keep
what they see on logged training steps only. The loop calls `before_forward(step)`, then
`after_backward(step)` between backward and the optimiser step, and `after_step(step)` after
it; on logged steps the last returns one row per layer.

Every statistic for every layer is computed on the device and fetched in a single transfer per
logged step: never an `.item()` per layer. Norms accumulate in float64, so a gradient of
float32 entries near 1e-40 or 1e30 has its true norm (a float32 sum of squares would underflow
to 0 or overflow to Inf). A statistic the probe did not measure is None; a measured one that is
NaN or Inf stays NaN or Inf.

**Activations.** A layer's activation is the output of its declared activation module or, given
the `model` (a model gradlab did not build), of the activation module (`ACTIVATION_KINDS`) that
runs right after the layer's owner module, whatever the registration order and even when one
module serves several layers. Its mean, std, saturated and dead fractions are judged by that
module's kind. They are taken on the device in float64 and, where possible, batched: at the
first logged step every activation's statistics are taken at once inside its hook (so an
in-place change later in the forward pass, `ReLU(inplace=True)` or `x += shortcut`, cannot alter
them) and the probe notes, by the tensors' version counters, which outputs were changed in
place afterwards. Those stay at once; the others are kept by reference and their statistics
batched after backward, one call per shape and kind. An output found changed on a later step,
having been kept by reference, is recorded as not measured on that step (never a wrong value)
and is taken at once from then on.

**Order.** Given `model` and each layer's `owners`, `order()` gives the rows in the order their
owners first ran (registration order is not execution order, e.g. in a Pre-LN Transformer).

Mixed precision (`precision` bf16 or fp16): the headroom statistics `z_absmax`, `overflow`,
`grad_underflow` (with `underflow(reference)`) and `grad_tiny` join the same transfer; an fp32
probe leaves them unmeasured and computes nothing for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradlab.build.discover import activation_kind
from gradlab.build.probed import ProbedLayer, TimeSteps
from gradlab.config.schema import DYING, SATURATING

# The statistics of one layer row, in the order they are stacked on the device.
STATS = (
    "grad_norm", "grad_rms", "grad_absmax", "weight_norm", "update_ratio", "delta_norm",
    "act_mean", "act_std", "act_saturated", "act_dead",
    "z_absmax", "overflow", "grad_underflow", "grad_tiny",
    "act_q05", "act_q50", "act_q95", "grad_q05", "grad_q50", "grad_q95",
)
COLUMN = {name: i for i, name in enumerate(STATS)}
# The distribution of each layer's outputs and of its |∂L/∂W| entries: the 5%, 50% and 95%
# quantiles of at most QUANTILE_SAMPLE evenly spaced entries (every entry of a smaller tensor),
# float64, one sort for all layers (`nanquantiles`)
QUANTILES = (0.05, 0.5, 0.95)
QUANTILE_STATS = ("act_q05", "act_q50", "act_q95", "grad_q05", "grad_q50", "grad_q95")
QUANTILE_SAMPLE = 1024
# Sorting the samples costs milliseconds: quantiles are taken at the first and the last step and
# every QUANTILE_EVERY-th logged step in between (every 80 steps at probe.every 10), not on all
QUANTILE_EVERY = 8
# ‖∂L/∂h_t‖ of a recurrent model needs its top layer run one time step at a time, about 3× a
# fused step: the gradients through time are taken on the same sparse steps as the quantiles
# (the first, the last and every QUANTILE_EVERY-th logged step); the other logged steps run
# the fused module and have every per-layer statistic but no time_grads row
ACTIVATION_STATS = ("act_mean", "act_std", "act_saturated", "act_dead")
# Measured in bf16/fp16 runs only: the largest |z_l| of the forward pass, the non-finite entries
# of z_l and of ∂L/∂W, the entries of ∂L/∂W that are 0 but nonzero in a float32 backward of the
# same batch, and the nonzero entries below the dtype's smallest normal (subnormal: precision lost)
PRECISION_STATS = ("z_absmax", "overflow", "grad_underflow", "grad_tiny")
F64 = torch.float64
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}

Hook = Callable[[torch.nn.Module, Any, Any], None]


def norms64(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of each tensor, accumulated in float64: exact where float32 squares would
    underflow (entries below ~1e-19) or overflow (above ~1e19). (n,) float64."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=F64))


def unit_spread(layers: list[ProbedLayer]) -> float | None:
    """How different a layer's units are, at most over the hidden layers: for each hidden
    weight matrix W (a row per unit), sqrt(mean_i ‖W_i − mean row‖²) / sqrt(mean_i ‖W_i‖²) in
    float64. 0 when every unit of every hidden layer is identical (a constant init's symmetry,
    which gradient descent never breaks); about 1 for a random init. None without a hidden
    weight matrix (the read-out, the last layer, is left out: it may have one unit)."""
    spreads = []
    for layer in layers[:-1]:
        w = layer.weight.detach().to(torch.float64)
        if w.dim() != 2 or w.shape[0] < 2:
            continue
        scale = w.pow(2).sum(dim=1).mean().sqrt()
        spread = (w - w.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean().sqrt()
        spreads.append(float(spread / scale) if scale > 0 else 0.0)
    return max(spreads) if spreads else None


def first_tensor(output: Any) -> torch.Tensor | None:
    """A module's main output: itself, or the first tensor of a tuple, list or dict (an
    attention module returns a tuple: its first element is taken as z_l)."""
    if isinstance(output, torch.Tensor):
        return output
    items = output.values() if isinstance(output, dict) else output \
        if isinstance(output, (tuple, list)) else ()
    return next((o for o in items if isinstance(o, torch.Tensor)), None)


def _per_example(h: torch.Tensor) -> torch.Tensor:
    """An activation as (examples, units): the first dimension is the batch (a 1-D output is
    one example)."""
    return h.reshape(h.shape[0], -1) if h.dim() > 1 else h.reshape(1, -1)


class Scratch:
    """Buffers a probe reuses from one logged step to the next, by name and shape. A tensor of a
    few hundred KiB or more, allocated anew, comes from fresh pages of memory (the C library maps
    large blocks and unmaps them when freed), and touching them costs more than the statistics
    computed in them: on a 50 × 100 sigmoid net's activations, about 4.7 ms against 2.2 ms in
    buffers. Kept buffers stay allocated through the training steps in between, so at most
    `limit` bytes are kept; a larger model's are allocated for the logged step alone, as the
    memory budget (`build.budget`) assumes."""

    LIMIT = 64 << 20

    def __init__(self, limit: int = LIMIT) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...], torch.dtype], torch.Tensor] = {}
        self._left = limit

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        key = (name, shape, dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.device != device:
            buffer = torch.empty(shape, dtype=dtype, device=device)
            size = buffer.numel() * buffer.element_size()
            if size <= self._left:
                self._buffers[key] = buffer
                self._left -= size
        return buffer

    def spaced(self, n: int, device: torch.device) -> torch.Tensor:
        """The QUANTILE_SAMPLE evenly spaced indices into n entries (`_sample`), made once."""
        key = ("spaced", (n,), torch.long)
        index = self._buffers.get(key)
        if index is None or index.device != device:
            index = self._buffers[key] = _spaced(n, device)
        return index


def activation_stats(h: torch.Tensor | list[torch.Tensor], kind: str | None,
                     scratch: Scratch | None = None) -> torch.Tensor:
    """(mean, std, saturated, dead) of each activation in `h` (activations, examples, units), or
    of each (examples, units) tensor of a list, float64 on its device; NaN where a statistic
    does not apply to `kind`. Moments in float64: a collapsed forward signal (std ~1e-25) must
    not square to 0. Reductions run over one contiguous dimension (on the CPU, reducing over two
    dimensions is several times slower); the float64 copy is centred in place and its norm
    taken, so the deviations are never squared into a tensor of their own (a third of the passes
    over memory). With `scratch`, the copies and masks are made in its buffers."""
    if isinstance(h, list):
        shape = (len(h), *h[0].shape)
        if scratch is None:
            h = torch.stack(h)
        else:
            h = torch.stack(h, out=scratch.get("stacked", shape, h[0].dtype, h[0].device))
    n = h.shape[0]
    if scratch is None:
        flat = h.reshape(n, -1).to(F64, copy=True)  # ours to change: never the model's
    else:
        flat = scratch.get("float64", (n, h[0].numel()), F64, h.device)
        flat.copy_(h.reshape(n, -1))

    def mask(name: str) -> torch.Tensor | None:
        return None if scratch is None else scratch.get(name, tuple(flat.shape), torch.bool,
                                                        flat.device)

    mean = flat.mean(dim=1)
    nan = torch.full_like(mean, math.nan)
    if kind in ("sigmoid", "tanh"):  # sigmoid: h < 0.01 or h > 0.99; tanh: |h| > 0.99
        low = torch.lt(flat, 0.01 if kind == "sigmoid" else -0.99, out=mask("below"))
        saturated = low.logical_or_(torch.gt(flat, 0.99, out=mask("above")))
        # a count of whole numbers, exact in float64: count_nonzero is 3x faster than a sum
        saturated = saturated.count_nonzero(dim=1).to(F64) / flat.shape[1]
    else:
        saturated = nan
    # a unit is dead when it is off for the whole batch; max ≤ 0 is (h ≤ 0).all() at a tenth
    # of the cost
    dead = (h.amax(dim=1) <= 0).to(F64).mean(dim=1) if kind in DYING else nan
    flat -= mean[:, None]
    std = torch.linalg.vector_norm(flat, dim=1) / math.sqrt(max(1, flat.shape[1] - 1))
    return torch.stack([mean, std, saturated, dead], dim=1)


def _sample(row: torch.Tensor, scratch: Scratch | None = None) -> torch.Tensor:
    """At most QUANTILE_SAMPLE evenly spaced entries of a 1-D tensor (all of a smaller one)."""
    if row.numel() > QUANTILE_SAMPLE:
        return row[_spaced(row.numel(), row.device) if scratch is None
                   else scratch.spaced(row.numel(), row.device)]
    return row


def _spaced(n: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(0, n - 1, QUANTILE_SAMPLE, device=device).long()


def _samples(rows: list[torch.Tensor], scratch: Scratch | None = None) -> torch.Tensor:
    """Each 1-D tensor as a row of QUANTILE_SAMPLE float64 values: evenly spaced entries of a
    larger one, every entry of a smaller one (padded with NaN, which nanquantile skips)."""
    device = rows[0].device if rows else torch.device("cpu")
    shape = (len(rows), QUANTILE_SAMPLE)
    out = torch.empty(shape, dtype=F64, device=device) if scratch is None \
        else scratch.get("samples", shape, F64, device)
    out.fill_(math.nan)
    for i, row in enumerate(rows):
        row = _sample(row, scratch)
        out[i, :row.numel()] = row
    return out


def nanquantiles(rows: torch.Tensor, q: torch.Tensor, *,
                 numpy_sort: bool | None = None) -> torch.Tensor:
    """`torch.nanquantile(rows, q, dim=1)` (linear interpolation; NaN skipped, NaN for a row of
    NaN only), computed as torch computes it, value for value, but with the rows sorted by
    NumPy on the CPU (`numpy_sort` None: on the CPU only): NumPy's vectorised sort took 1.2 ms
    for 100 rows of 1024 float64 values where torch's took 4.3 ms. (q, rows) float64."""
    if numpy_sort if numpy_sort is not None else rows.device.type == "cpu":
        ordered = torch.from_numpy(np.sort(rows.numpy(), axis=1))  # NaN last, as torch sorts
    else:
        ordered = rows.sort(dim=1).values
    count = ordered.isnan().logical_not_().sum(dim=1, keepdim=True)
    ranks = q * (count - 1)  # (rows, q): where each quantile falls among a row's values
    ranks.masked_fill_(ranks < 0, 0)  # a row of NaN only: its first value, NaN
    below = ranks.to(torch.long)
    weights = ranks - below
    above = ranks.ceil_().to(torch.long)
    return ordered.gather(1, below).lerp_(ordered.gather(1, above), weights).T


class Probe:
    """Watches `layers` every `every` steps (and on `last_step`); with `model` (and each
    layer's `owners`), also finds activations as the model runs and learns the rows' order."""

    def __init__(self, layers: list[ProbedLayer], *, every: int, last_step: int,
                 activations: bool = True, time: TimeSteps | None = None,
                 enabled: bool = True, precision: str = "fp32",
                 model: nn.Module | None = None, owners: list[nn.Module] | None = None):
        self.enabled = enabled
        self.layers = layers
        self.every = every
        self.last_step = last_step
        self.time = time
        device = layers[0].weight.device
        self._weights = [p.weight.detach() for p in layers]  # views: they follow the steps
        self._numel = torch.tensor([float(p.weight.numel()) for p in layers], dtype=F64,
                                   device=device)
        self._nan = torch.full((len(layers),), math.nan, dtype=F64, device=device)
        self._armed = False  # capture in the forward pass now under way
        self._quantiles = False  # and take samples for the quantiles in it
        self._pending: torch.Tensor | None = None
        self._measured: dict[str, list[bool]] = {}
        self._before: list[torch.Tensor] = []
        self._time_norms: torch.Tensor | None = None
        # this forward pass's activations, by row: the output (detached) and its version
        # counter when the hook saw it; for rows taken at once, their statistics and samples
        self._outputs: dict[int, torch.Tensor] = {}
        self._versions: dict[int, int] = {}
        self._kinds: dict[int, str | None] = {}
        self._act: dict[int, torch.Tensor] = {}  # row → (mean, std, saturated, dead)
        self._act_samples: dict[int, torch.Tensor] = {}
        self._at_once: set[int] = set()  # rows whose outputs are changed in place later
        self._learned = False  # a logged step has shown which rows those are
        self._deltas: dict[int, torch.Tensor] = {}  # layer index → ‖∂L/∂z_l‖ (0-d, float64)
        self._scratch = Scratch()
        self._state_norms: list[torch.Tensor | None] = []
        self._extra: dict[str, torch.Tensor] = {}
        self.set_precision(precision)
        self._z: dict[int, torch.Tensor] = {}  # layer index → (max |z_l|, non-finite entries)
        self._scale: torch.Tensor | None = None  # the loss scale of this step's backward
        self.scalars: dict[str, float] = {}  # the extra scalars fetched with the last rows
        self.time_grads: list[float] | None = None  # ‖∂L/∂h_t‖ this step fetched (None until it does)
        self._hooks: list[RemovableHandle] = []
        self._model = model
        self._last_row: int | None = None  # the row whose owner module ran last
        self._first_run: dict[int, int] = {}  # owner index → when it first ran
        self._ordering = model is not None  # the first forward pass gives the order
        self._rows_of: list[list[int]] = [[i] for i in range(len(layers))]
        # The hooks are attached for a logged step's forward pass only (and the first, which
        # gives the order): an unlogged step runs the model without any, so probing every 10
        # steps costs nothing on the other nine.
        self._plan: list[tuple[nn.Module, Hook]] = []
        if not enabled:
            return
        declared = {i: activation_kind(layer.activation) for i, layer in enumerate(layers)
                    if layer.activation is not None}
        for i, layer in enumerate(layers):
            if activations and layer.activation is not None:
                self._plan.append((layer.activation, self._keep_output(i, declared[i])))
            if layer.module is not None:
                self._plan.append((layer.module, self._watch_z(i)))
        if time is not None:
            self._plan.append((time.tap, self._watch_state))
        if model is not None:
            self._plan_discovery(model, owners or [layer.module or model for layer in layers],
                                 {id(layer.activation) for layer in layers
                                  if layer.activation is not None}, activations)
            self._attach()

    def _plan_discovery(self, model: nn.Module, owners: list[nn.Module], declared: set[int],
                        activations: bool) -> None:
        """Hooks on each owner (for the order, and for which row an activation follows), on
        every undeclared activation module, and on the model (a new forward pass)."""
        distinct: list[nn.Module] = []
        rows_of: list[list[int]] = []
        for i, owner in enumerate(owners):
            if not any(owner is o for o in distinct):
                distinct.append(owner)
                rows_of.append([])
            rows_of[next(k for k, o in enumerate(distinct) if o is owner)].append(i)
        self._rows_of = rows_of
        self._plan += [(owner, self._ran(k, rows_of[k][-1])) for k, owner in enumerate(distinct)]
        if activations:
            for module in model.modules():
                kind = activation_kind(module)
                if kind is not None and id(module) not in declared:
                    self._plan.append((module, self._follows(kind)))
        self._plan.append((model, self._forward_done))

    def wants(self, step: int) -> bool:
        """Whether `step` is a logged step."""
        return self.enabled and (step % self.every == 0 or step == self.last_step)

    def _wants_quantiles(self, step: int) -> bool:
        return step == 0 or step == self.last_step or (step // self.every) % QUANTILE_EVERY == 0

    def order(self) -> list[int]:
        """Row indices in the order their owner modules first ran (rows never run, last)."""
        never = len(self._rows_of)
        keyed = sorted(range(len(self._rows_of)), key=lambda k: (self._first_run.get(k, never), k))
        return [i for k in keyed for i in self._rows_of[k]]

    def before_forward(self, step: int) -> None:
        """Capture in the coming forward pass if `step` is logged (unrolling a recurrent top)."""
        self._armed = self.wants(step)
        self._quantiles = self._armed and self._wants_quantiles(step)
        self._forget()
        self._state_norms = []
        self.time_grads = None  # this step's alone: a step that fetches nothing has none
        if self._armed or self._ordering:
            self._attach()
        else:
            self._detach()
        if self.time is not None and self.enabled:
            self.time.unroll(self._quantiles)

    def set_precision(self, precision: str) -> None:
        """Measure headroom against `precision`'s limits (bf16, fp16), or not (fp32)."""
        dtype = LOW_PRECISION.get(precision)
        self.precision = precision
        self._low = dtype is not None
        self._tiny = torch.finfo(dtype).tiny if dtype is not None else 0.0

    def set_loss_scale(self, scale: torch.Tensor | None) -> None:
        """This step's gradients were unscaled (`GradScaler.unscale_`) but ∂L/∂z_l, read in
        backward, were not: divide them by `scale`, and count `grad_tiny` at the scaled values."""
        self._scale = scale

    def unscale(self, scale: torch.Tensor) -> None:
        """Divide this logged step's gradient statistics by a loss scale (mixed precision in a
        loop that unscales nothing: the gradients read were those of `scale` × the loss)."""
        if self._pending is not None:
            for name in ("grad_norm", "grad_rms", "grad_absmax", "delta_norm"):
                self._pending[:, COLUMN[name]] /= scale.to(F64)

    def fetch_with(self, name: str, value: torch.Tensor) -> None:
        """Fetch a scalar of this logged step (e.g. the norm after clipping) with its rows."""
        if self._pending is not None:
            self._extra[name] = value.detach().to(F64).reshape(())

    def _attach(self) -> None:
        if self._hooks:
            return
        self._hooks = [module.register_forward_hook(hook) for module, hook in self._plan]
        if self._model is not None:
            self._hooks.append(self._model.register_forward_pre_hook(self._new_forward))

    def _detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _forget(self) -> None:
        """Drop what the forward pass under way captured of activations and z_l."""
        self._outputs, self._versions, self._kinds = {}, {}, {}
        self._act, self._act_samples = {}, {}
        self._deltas, self._z, self._last_row = {}, {}, None

    def close(self) -> None:
        """Remove every hook and leave a recurrent model fused: the model is as it was given."""
        self._detach()
        self._armed = False
        self._forget()
        self._state_norms = []
        if self.time is not None:
            self.time.unroll(False)

    # ------------------------------------------------------------ hooks

    def _capturing(self) -> bool:
        # evaluation runs under no_grad: it never overwrites a training step's capture
        return self._armed and torch.is_grad_enabled()

    def _capture(self, i: int, output: Any, kind: str | None) -> None:
        """Row `i`'s activation: kept by reference, and its statistics taken at once where the
        output may yet change in place (see the module docstring)."""
        if not isinstance(output, torch.Tensor) or output.numel() == 0:
            return
        h = output.detach()
        self._outputs[i], self._versions[i], self._kinds[i] = h, h._version, kind
        if not self._learned or i in self._at_once:
            self._act[i] = activation_stats(_per_example(h)[None], kind)[0]
            if self._quantiles:
                self._act_samples[i] = _sample(h.flatten(), self._scratch).clone()

    def _keep_output(self, i: int, kind: str | None) -> Hook:
        """A declared activation module (`ProbedLayer.activation`)."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._capturing():
                self._capture(i, output, kind)

        return hook

    def _follows(self, kind: str) -> Hook:
        """An undeclared activation module: its output is the activation of the row whose
        owner ran just before (once per row and forward pass)."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            row = self._last_row
            self._last_row = None
            if row is not None and row not in self._outputs and self._capturing():
                self._capture(row, output, kind)

        return hook

    def _ran(self, k: int, row: int) -> Hook:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._ordering and k not in self._first_run:
                self._first_run[k] = len(self._first_run)
            self._last_row = row

        return hook

    def _new_forward(self, module: nn.Module, inputs: Any) -> None:
        if self._capturing():  # the last forward pass before backward is the one measured
            self._forget()

    def _forward_done(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._ordering = False

    def _watch_z(self, i: int) -> Hook:
        """z_l passed its module: keep ‖∂L/∂z_l‖ when backward reaches it."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            z = first_tensor(output)
            if not (self._capturing() and z is not None and z.requires_grad):
                return
            if self._low:  # headroom in the forward pass: max |z_l|, and entries that overflowed
                low, high = torch.aminmax(z.detach())
                self._z[i] = torch.stack([torch.maximum(high, -low).to(F64),
                                          (~z.detach().isfinite()).sum().to(F64)])

            def keep(grad: torch.Tensor) -> None:
                # the norm now, on the device: autograd may reuse the buffer after the hook
                self._deltas[i] = torch.linalg.vector_norm(grad, dtype=F64)

            z.register_hook(keep)

        return hook

    def _watch_state(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """h_t passed the tap: keep ‖∂L/∂h_t‖ when backward reaches it."""
        if not self._capturing() or not output.requires_grad:
            return
        t = len(self._state_norms)
        self._state_norms.append(None)

        def keep(grad: torch.Tensor) -> None:
            self._state_norms[t] = torch.linalg.vector_norm(grad, dtype=F64)

        output.register_hook(keep)

    # ------------------------------------------------------------ statistics

    def after_backward(self, step: int) -> None:
        """Gradient, weight, backward-signal and activation statistics, kept on the device."""
        self._ordering = False  # the order is known once a step has run
        if not self.wants(step):
            self._detach()
            return
        self._armed = False
        self._detach()  # the tensor hooks on z_l and h_t have fired; the module hooks can go
        # a layer that took no part in the loss (never called, or frozen) has no gradient: its
        # gradient statistics are not measured (a zero would read as a gradient of exactly 0)
        has_grad = [p.weight.grad is not None for p in self.layers]
        grads = [p.weight.grad if p.weight.grad is not None else torch.zeros_like(p.weight)
                 for p in self.layers]
        grad_norm = norms64(grads)
        # max |g| from one aminmax pass per layer: _foreach_norm(·, inf) is ~10x slower on the
        # CPU, and |g| materialised first costs two more passes over every gradient
        low, high = zip(*(torch.aminmax(g) for g in grads))
        grad_absmax = torch.maximum(torch.stack(high), -torch.stack(low)).to(F64)
        self._before = [w.clone() for w in self._weights]  # for the update ratio
        acts, measured_acts, valid = self._activation_stats()
        deltas = self._delta_column()
        if self._scale is not None:
            deltas = deltas / self._scale.to(F64)
        n = len(self.layers)
        if self._wants_quantiles(step):
            quantiles, measured_quantiles = self._quantile_stats(grads, valid)
        else:
            quantiles = {name: self._nan for name in QUANTILE_STATS}
            measured_quantiles = {name: [False] * n for name in QUANTILE_STATS}
        columns = {"grad_norm": grad_norm, "grad_rms": grad_norm / self._numel.sqrt(),
                   "grad_absmax": grad_absmax, "weight_norm": norms64(self._weights),
                   "update_ratio": self._nan, "delta_norm": deltas, **acts,
                   **self._precision_stats(grads), **quantiles}
        none = [False] * n
        kinds = [self._kinds.get(i) for i in range(n)]
        graded = {name: has_grad for name in ("grad_norm", "grad_rms", "grad_absmax")}
        self._measured = {
            **graded,
            "update_ratio": none,
            "delta_norm": [i in self._deltas for i in range(n)],
            "act_mean": measured_acts, "act_std": measured_acts,
            # saturation is defined for sigmoid and tanh, dead units for ReLU
            "act_saturated": [m and k in SATURATING for m, k in zip(measured_acts, kinds)],
            "act_dead": [m and k in DYING for m, k in zip(measured_acts, kinds)],
            "z_absmax": [i in self._z for i in range(n)],
            "overflow": [self._low] * n,
            "grad_underflow": none, "grad_tiny": [self._low and g for g in has_grad],
            **measured_quantiles,
        }
        for name in ("grad_q05", "grad_q50", "grad_q95"):
            self._measured[name] = [m and g for m, g in zip(self._measured[name], has_grad)]
        self._time_norms = self._time_grad_norms()
        self._forget()
        self._extra = {}
        self._pending = torch.stack([columns[name] for name in STATS], dim=1)  # (layers, stats)

    def underflow(self, reference: list[torch.Tensor | None]) -> None:
        """Count, per layer, the gradient entries that are 0 here but nonzero in `reference`
        (the same batch's float32 backward): lost to underflow in the low precision."""
        if self._pending is None or not self._low:
            return
        zero = self._numel.new_zeros(())
        counts = [((g == 0) & (r != 0)).sum().to(F64)
                  if (g := layer.weight.grad) is not None and r is not None else zero
                  for layer, r in zip(self.layers, reference)]
        self._pending[:, COLUMN["grad_underflow"]] = torch.stack(counts)
        self._measured["grad_underflow"] = [layer.weight.grad is not None
                                            for layer in self.layers]

    def after_step(self, step: int) -> list[dict[str, Any]] | None:
        """Add update-to-weight ratios and fetch the step's rows (one transfer)."""
        if self._pending is None:
            return None
        torch._foreach_sub_(self._before, self._weights)  # in place: the copies are not needed again
        update = norms64(self._before)
        stats = self._pending
        stats[:, COLUMN["update_ratio"]] = update / stats[:, COLUMN["weight_norm"]]
        self._measured["update_ratio"] = [True] * len(self.layers)
        return self._fetch(step, stats)

    def flush(self, step: int) -> list[dict[str, Any]] | None:
        """Fetch a logged step's rows when no optimiser step followed (a diverged run)."""
        if self._pending is None:
            return None
        return self._fetch(step, self._pending)

    def _fetch(self, step: int, stats: torch.Tensor) -> list[dict[str, Any]]:
        parts = [stats.flatten()]
        if self._time_norms is not None:
            parts.append(self._time_norms)
        names = list(self._extra)
        if names:
            parts.append(torch.stack([self._extra[n] for n in names]))
        fetched = torch.cat(parts).cpu().tolist()  # note: the one CPU-GPU sync of a logged step
        n, width = stats.numel(), stats.shape[1]
        n_time = 0 if self._time_norms is None else len(self._time_norms)
        self.time_grads = fetched[n:n + n_time] if self._time_norms is not None else None
        self.scalars = dict(zip(names, fetched[n + n_time:]))
        cells = [fetched[i * width:(i + 1) * width] for i in range(len(self.layers))]
        for name, measured in self._measured.items():  # most are all True or all False
            if not all(measured):
                k = COLUMN[name]
                for row, m in zip(cells, measured):
                    if not m:
                        row[k] = None
        update, weight = COLUMN["update_ratio"], COLUMN["weight_norm"]
        rows = []
        for i, layer in enumerate(self.layers):
            row = cells[i]
            if row[weight] == 0:  # a ratio to a zero weight is not defined
                row[update] = None
            rows.append({"step": step, "layer": i, "name": layer.name, **dict(zip(STATS, row))})
        self._pending, self._before, self._time_norms = None, [], None
        self._state_norms, self._extra = [], {}
        return rows

    def _delta_column(self) -> torch.Tensor:
        if not self._deltas:
            return self._nan
        column = self._nan.clone()
        index = sorted(self._deltas)
        column[torch.tensor(index, device=column.device)] = torch.stack(
            [self._deltas[i] for i in index])
        return column

    def _quantile_stats(self, grads: list[torch.Tensor], valid: list[int]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, list[bool]]]:
        """The 5/50/95% quantiles of each layer's outputs (the `valid` rows) and of its |∂L/∂W|
        entries, from at most QUANTILE_SAMPLE evenly spaced entries each, in one call."""
        n = len(self.layers)
        acts = [i for i in valid if i in self._act_samples or i not in self._act]
        rows = [g.flatten() for g in grads] + [
            self._act_samples[i] if i in self._act_samples else self._outputs[i].flatten()
            for i in acts]
        samples = _samples(rows, self._scratch)
        samples[:n].abs_()  # |∂L/∂W| of the sampled entries: the same as sampling |∂L/∂W|
        q = nanquantiles(samples, torch.tensor(QUANTILES, dtype=F64, device=samples.device))
        out: dict[str, torch.Tensor] = {}
        for k, name in enumerate(("grad_q05", "grad_q50", "grad_q95")):
            out[name] = q[k, :n]
        for k, name in enumerate(("act_q05", "act_q50", "act_q95")):
            column = self._nan.clone()
            if acts:
                column[torch.tensor(acts, device=column.device)] = q[k, n:]
            out[name] = column
        has_act = [i in acts for i in range(n)]
        measured = {name: [True] * n for name in ("grad_q05", "grad_q50", "grad_q95")}
        measured.update({name: has_act for name in ("act_q05", "act_q50", "act_q95")})
        return out, measured

    def _precision_stats(self, grads: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """z_absmax, overflow and grad_tiny of every layer (NaN columns, at no cost, in fp32)."""
        if not self._low:
            return {name: self._nan for name in PRECISION_STATS}
        z = self._nan.new_full((len(self.layers), 2), math.nan)
        if self._z:
            index = sorted(self._z)
            z[torch.tensor(index, device=z.device)] = torch.stack([self._z[i] for i in index])
        # the smallest normal, at the values the low-precision backward held (scaled)
        tiny = self._tiny if self._scale is None else self._tiny / self._scale.float()
        bad, small = [], []
        for g in grads:
            bad.append((~g.isfinite()).sum())
            small.append(((g != 0) & (g.abs() < tiny)).sum())
        overflow = torch.stack(bad).to(F64) + z[:, 1].nan_to_num(0.0)
        return {"z_absmax": z[:, 0], "overflow": overflow, "grad_underflow": self._nan,
                "grad_tiny": torch.stack(small).to(F64)}

    def _time_grad_norms(self) -> torch.Tensor | None:
        """‖∂L/∂h_t‖ for every time step the tap saw in this step's forward pass."""
        if not self._state_norms:
            return None
        zero = torch.zeros((), dtype=F64, device=self._numel.device)
        return torch.stack([g if g is not None else zero for g in self._state_norms])  # (time,)

    def _activation_stats(self) -> tuple[dict[str, torch.Tensor], list[bool], list[int]]:
        """Mean, std, saturated and dead fractions of each watched layer's activation, which
        layers have them (not the head, which has no activation of its own), and the rows whose
        output is still as its hook saw it (for the quantiles)."""
        n = len(self.layers)
        changed = {i for i, h in self._outputs.items() if h._version != self._versions[i]}
        self._at_once |= changed  # changed in place after its hook: taken at once from now on
        self._learned = True
        block = self._nan.new_full((n, len(ACTIVATION_STATS)), math.nan)
        rows: list[int] = []
        parts: list[torch.Tensor] = []
        if self._act:
            index = sorted(self._act)
            rows += index
            parts.append(torch.stack([self._act[i] for i in index]))
        groups: dict[tuple[tuple[int, ...], str | None], list[int]] = {}
        for i in sorted(self._outputs):
            if i not in self._act and i not in changed:  # kept by reference, unchanged
                h = self._outputs[i]
                groups.setdefault((tuple(h.shape), self._kinds[i]), []).append(i)
        for (_, kind), index in groups.items():
            rows += index
            parts.append(activation_stats([_per_example(self._outputs[i]) for i in index], kind,
                                          self._scratch))
        if rows:
            block[torch.tensor(rows, device=block.device)] = torch.cat(parts).to(block.device)
        columns = {name: block[:, k] for k, name in enumerate(ACTIVATION_STATS)}
        measured = set(rows)
        valid = [i for i in sorted(self._outputs) if i not in changed or i in self._act]
        return columns, [i in measured for i in range(n)], valid
