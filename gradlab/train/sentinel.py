"""The first-NaN sentinel: where a NaN/Inf first appeared, in which direction, and who made it.

`Sentinel(model)` is always on and costs next to nothing: two hooks on the model itself keep
references to the last training forward's inputs, the random state before it (so dropout
draws the same masks again) and a copy of the gradient that reached the model's output.
Nothing is checked per step here; the caller notices a non-finite loss or gradient norm (one
sync it makes anyway) and then calls `locate()`, once per run.

`locate()` replays that forward pass once with hooks on every module, and, if every output was
finite, the backward pass from the kept output gradient:

- **forward**: a call *produced* a NaN/Inf when its output is non-finite while its inputs and
  its own parameters are finite; calls complete innermost first, so the first such call is the
  innermost module whose own code made it (a container is named only when the value appeared
  in its own code, between its children). Modules after it, fed non-finite values, merely
  passed it on (`passed_on`).
- **backward**: a call produced it when the gradient of its outputs is finite but that of one
  of its inputs (through this call only: each input is aliased for the replay), of one of its
  own parameters, or of one of its children's outputs is not; the innermost such call nearest
  the output is named.
- weights that are already non-finite are named first (`what: weights`); a non-finite batch is
  `what: input`; a finite forward pass with a non-finite loss is `what: loss`.

The replay leaves the model as it was: buffers (batch-norm running statistics) are restored,
the random state is forked, parameter gradients are returned rather than accumulated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradlab.build.discover import display_name
from gradlab.train.probe import first_tensor

MOST_PASSED_ON = 6


class Sentinel:
    """Keeps what a replay of the model's last training forward pass needs."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.args: tuple[Any, ...] | None = None
        self.kwargs: dict[str, Any] = {}
        self.rng: list[torch.Tensor] | None = None
        self.out_grad: torch.Tensor | None = None
        self.calls = 0  # training forward passes seen (a step without one has nothing to replay)
        self.paused = False
        device = next(model.parameters()).device
        self._cuda = [device.index or 0] if device.type == "cuda" else []
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after),
        ]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.args, self.kwargs, self.out_grad, self.rng = None, {}, None, None

    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.paused or not torch.is_grad_enabled():
            return
        self.args, self.kwargs, self.out_grad = args, kwargs, None
        self.rng = [torch.get_rng_state(), *(torch.cuda.get_rng_state(i) for i in self._cuda)]
        self.calls += 1

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        out = first_tensor(output)
        if self.paused or not torch.is_grad_enabled() or out is None or not out.requires_grad:
            return

        def keep(grad: torch.Tensor) -> None:
            self.out_grad = grad.detach().clone()  # autograd may reuse the buffer

        out.register_hook(keep)

    def locate(self, loss_finite: bool, scale: torch.Tensor | None = None,
               loss: float | None = None) -> dict[str, Any]:
        """Where the last training step's NaN/Inf came from (see the module docstring):
        `{direction, what, module, passed_on, value}`. `scale`: a mixed-precision loss scale
        the kept output gradient is divided by, so the replay is of the unscaled loss. `loss`:
        its value, for `value` where the loss itself is what went non-finite."""
        if self.args is None:
            return _where(None, "unknown", None, note="no training forward pass was seen")
        out_grad = self.out_grad
        if out_grad is not None and scale is not None:
            out_grad = out_grad / scale.to(out_grad.device, out_grad.dtype)
        self.paused = True
        try:
            where = _locate(self.model, self.args, self.kwargs, self.rng, out_grad,
                            loss_finite, self._cuda)
        finally:
            self.paused = False
        if where["what"] == "loss" and where["value"] is None and loss is not None \
                and not math.isfinite(loss):
            where["value"] = "NaN" if math.isnan(loss) else "Inf"
        return where


def _where(direction: str | None, what: str, module: str | None, passed_on: list[str] | None = None,
           value: str | None = None, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"direction": direction, "what": what, "module": module,
                           "passed_on": passed_on or [], "value": value}
    if note:
        out["note"] = note
    return out


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _bad(tensors: list[torch.Tensor]) -> str | None:
    """'NaN' or 'Inf' if any floating tensor has such an entry, else None."""
    floats = [t.detach() for t in tensors if t.is_floating_point() or t.is_complex()]
    if not floats:
        return None
    if any(bool(t.isnan().any()) for t in floats):
        return "NaN"
    if not all(bool(t.isfinite().all()) for t in floats):
        return "Inf"
    return None


@dataclass
class _Call:
    name: str
    module: nn.Module
    parent: int | None
    inputs_bad: str | None = None
    output_bad: str | None = None
    done: int = -1  # completion order
    children: list[int] = field(default_factory=list)
    in_grads: list[str | None] = field(default_factory=list)
    out_grads: list[str | None] = field(default_factory=list)


def _locate(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
            rng: list[torch.Tensor] | None, out_grad: torch.Tensor | None, loss_finite: bool,
            cuda: list[int]) -> dict[str, Any]:
    names = {m: display_name(n, m, model) for n, m in model.named_modules()}
    bad_weights = [(n, m) for m, n in names.items()
                   if _bad(list(m.parameters(recurse=False))) is not None]
    calls: list[_Call] = []
    stack: list[int] = []
    finished = [0]

    def pre(module: nn.Module, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        index = len(calls)
        call = _Call(names.get(module, type(module).__name__), module,
                     stack[-1] if stack else None)
        if call.parent is not None:
            calls[call.parent].children.append(index)
        calls.append(call)
        stack.append(index)
        call.inputs_bad = _bad(list(_tensors((a, kw))))
        # alias each input that carries a gradient: its hook then sees ∂L/∂input through
        # this call only, not the sum over every consumer of the tensor
        aliases: dict[int, torch.Tensor] = {}

        def alias(v: Any) -> Any:
            # (a leaf, such as a parameter passed in, would keep the hook after the replay)
            if not (isinstance(v, torch.Tensor) and v.requires_grad) or v.is_leaf:
                return v
            if id(v) not in aliases:
                x = v.view_as(v)
                slot = len(call.in_grads)
                call.in_grads.append(None)

                def keep(g: torch.Tensor, slot: int = slot) -> None:
                    call.in_grads[slot] = _bad([g]) or ""

                x.register_hook(keep)
                aliases[id(v)] = x
            return aliases[id(v)]

        return tuple(alias(v) for v in a), {k: alias(v) for k, v in kw.items()}

    def post(module: nn.Module, a: Any, kw: Any, output: Any) -> None:
        call = calls[stack.pop()]
        call.done = finished[0]
        finished[0] += 1
        outs = list(_tensors(output))
        call.output_bad = _bad(outs)
        for t in outs:
            if t.requires_grad:
                slot = len(call.out_grads)
                call.out_grads.append(None)

                def keep(g: torch.Tensor, slot: int = slot) -> None:
                    call.out_grads[slot] = _bad([g]) or ""

                t.register_hook(keep)

    handles: list[RemovableHandle] = []
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            if rng is not None:
                torch.set_rng_state(rng[0])
                for i, state in zip(cuda, rng[1:]):
                    torch.cuda.set_rng_state(state, i)
            try:
                output = model(*args, **kwargs)
            except Exception as e:  # the replay itself failed: say so rather than guess
                return _where(None, "unknown", None,
                              note=f"the replay failed: {type(e).__name__}: {e}")
        _remove(handles)
        return _analyse(model, calls, bad_weights, output, out_grad, loss_finite)
    finally:
        _remove(handles)
        _restore(buffers)  # after backprop: batch norm's backward checks its saved buffers


def _analyse(model: nn.Module, calls: list[_Call], bad_weights: list[tuple[str, nn.Module]],
             output: Any, out_grad: torch.Tensor | None, loss_finite: bool) -> dict[str, Any]:
    if bad_weights:  # weights made non-finite by an earlier update
        order = {id(c.module): c.done for c in reversed(calls)}
        name, module = min(bad_weights, key=lambda nm: order.get(id(nm[1]), len(calls)))
        return _where(None, "weights", name, value=_bad(list(module.parameters(recurse=False))))

    # forward: the first call to complete with a non-finite output from finite inputs
    by_done = sorted((c for c in calls if c.done >= 0), key=lambda c: c.done)
    producer = next((c for c in by_done if c.output_bad and not c.inputs_bad), None)
    if producer is not None:
        passed = _names([c for c in by_done if c.done > producer.done and c.output_bad
                         and not c.children and c.module is not producer.module])
        return _where("forward", "output", producer.name, passed, producer.output_bad)
    if calls and calls[0].inputs_bad:
        passed = _names([c for c in by_done if c.output_bad and not c.children])
        return _where("forward", "input", None, passed, calls[0].inputs_bad)
    if not loss_finite:
        return _where("forward", "loss", None)

    # backward, from the gradient that reached the model's output
    out = first_tensor(output)
    if out_grad is None or out is None or not out.requires_grad:
        return _where("backward", "gradient", None,
                      note="the model's output gradient was not seen: no replay of backprop")
    if _bad([out_grad]):
        return _where("backward", "loss", None, value=_bad([out_grad]),
                      note="the loss's own gradient is non-finite")
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        grads = torch.autograd.grad([out], params, [out_grad.to(out.dtype)], allow_unused=True)
    except RuntimeError as e:
        return _where("backward", "gradient", None,
                      note=f"the replayed backprop failed: {e}")
    bad_param = {id(p): _bad([g]) for p, g in zip(params, grads) if g is not None}

    def own_bad(c: _Call) -> str | None:
        flags = [*(g for g in c.in_grads if g), *(
            bad_param.get(id(p)) for p in c.module.parameters(recurse=False)),
            *(next((g for g in calls[k].out_grads if g), None) for k in c.children)]
        found = [f for f in flags if f]
        return None if not found else "NaN" if "NaN" in found else "Inf"

    candidate = [not any(c.out_grads) and own_bad(c) is not None for c in calls]

    def has_candidate_below(i: int) -> bool:
        return any(candidate[k] or has_candidate_below(k) for k in calls[i].children)

    producers = [i for i, c in enumerate(calls) if candidate[i] and not has_candidate_below(i)]
    if not producers:
        return _where("backward", "gradient", None,
                      note="the replayed backprop was finite: not reproduced")
    i = max(producers)  # nearest the output: backprop reaches it first
    passed = _names([c for c in reversed(calls[:i]) if any(c.out_grads) and not c.children
                     and c.module is not calls[i].module])
    return _where("backward", "gradient", calls[i].name, passed, own_bad(calls[i]))


def _names(calls: list[_Call]) -> list[str]:
    """The modules that passed a NaN/Inf on, once each, at most MOST_PASSED_ON; an
    `nn.Identity` (a built net's "no normalisation") hands on what it gets and is not named."""
    seen: list[str] = []
    for c in calls:
        if c.name not in seen and not isinstance(c.module, nn.Identity):
            seen.append(c.name)
    return seen[:MOST_PASSED_ON]


def _remove(handles: list[RemovableHandle]) -> None:
    for h in handles:
        h.remove()
    handles.clear()


@torch.no_grad()
def _restore(buffers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for b, saved in buffers:
        b.copy_(saved)
