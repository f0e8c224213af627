"""An `nn.RNN`/`nn.LSTM`/`nn.GRU`'s hidden states h_1..h_T, for a probe, without changing
what the module computes.

PyTorch's fused recurrent modules never hold h_1..h_T as tensors of their own, so ‖∂L/∂h_t‖
(the total derivative, through the read-out and every later step) cannot be read from them.
`time_steps(module)` declares a `TimeSteps` for such a module without changing it: while a
probe has `unroll(True)` in effect, a forward hook (run before any other hook on the module)
runs a shadow of the module one time step at a time (`recurrent.run_layer`, PyTorch's
equations) on detached copies of its input, initial state and parameters, each h_t of its
top layer through the tap, and returns the fused output plus (shadow − shadow.detach())
(`attach`): the fused values exactly (x + 0 is x), while backward carries ∂L/∂output into the
shadow too.
The fused module's backward alone reaches the parameters and the input, so the gradients,
and the training run, are those of the module unprobed, bit for bit; the shadow's backward
only computes the ∂L/∂h_t the tap's hooks read. `unroll(False)` removes the hook.

Not unrolled (no h_t reaches the tap): bidirectional modules, `proj_size`, a
`PackedSequence` input, and a stack of layers with dropout between them in training mode
(the masks are the fused module's own, which a shadow cannot draw alike).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradlab.build.probed import TimeSteps
from gradlab.build.recurrent import CELLS, State, run_layer


def why_not_unrolled(module: nn.RNNBase) -> str | None:
    """Why `module` cannot be run a time step at a time, or None when it can."""
    if module.mode not in CELLS:
        return f"mode {module.mode}"
    if module.bidirectional:
        return "bidirectional"
    if getattr(module, "proj_size", 0):
        return "proj_size"
    return None


def time_steps(module: nn.RNNBase) -> TimeSteps | None:
    """A `TimeSteps` whose tap sees each h_t of `module`'s top layer while unrolled, or None
    when the module cannot be unrolled (`why_not_unrolled`)."""
    if why_not_unrolled(module) is not None:
        return None
    stepper = _Stepper(module)
    return TimeSteps(stepper.tap, stepper.switch)


class _Stepper:
    def __init__(self, module: nn.RNNBase):
        self.module = module
        self.tap = nn.Identity()  # the probe's hook watches h_t here; not part of the model
        self._handle: RemovableHandle | None = None

    def switch(self, on: bool) -> None:
        if on and self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook, prepend=True,
                                                             with_kwargs=True)
        elif not on and self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
              output: Any) -> Any:
        m = self.module
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        if (not torch.is_grad_enabled() or not isinstance(x, torch.Tensor)
                or isinstance(x, PackedSequence)
                or (m.training and m.dropout > 0 and m.num_layers > 1)):
            return None  # the fused output stands, with no shadow
        if hx is not None:
            hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
        shadow = stepwise(self.module, x.detach(), hx, self.tap)
        out, state = output
        fused = [out, *(state if isinstance(state, tuple) else (state,))]
        ran = [shadow[0], *(shadow[1] if isinstance(shadow[1], tuple) else (shadow[1],))]
        joined = [attach(f, r) for f, r in zip(fused, ran, strict=True)]
        return joined[0], (tuple(joined[1:]) if isinstance(state, tuple) else joined[1])


def attach(fused: torch.Tensor, shadow: torch.Tensor) -> torch.Tensor:
    """`fused`'s values exactly, with a gradient path into `shadow`: fused + (shadow −
    shadow.detach()), an exact 0, except where the shadow is not finite (it overflowed where
    the fused module may not have): there 0 outright, so a probe never puts a NaN in a run."""
    zero = shadow - shadow.detach()
    return fused + torch.where(shadow.isfinite(), zero, torch.zeros_like(zero))


def stepwise(m: nn.RNNBase, x: torch.Tensor, hx: Any = None,
             tap: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, Any]:
    """`m(x, hx)`'s (output, h_n) or (output, (h_n, c_n)), a time step at a time, each h_t of
    the top layer through `tap`, from detached parameters: a graph through the top layer's
    h_t back to its initial state (a leaf of its own), reaching no parameter and no input."""
    lstm = m.mode == "LSTM"
    batched = x.dim() == 3
    seq = x if not batched else (x if m.batch_first else x.transpose(0, 1))
    if not batched:
        seq = seq.unsqueeze(0)  # (time, features) → (1, time, features)
    c0: torch.Tensor | None
    if hx is None:
        zeros = seq.new_zeros(m.num_layers, seq.shape[0], m.hidden_size)
        h0, c0 = zeros, zeros
    else:
        h0, c0 = hx if lstm else (hx, None)
        if not batched:
            h0 = h0.unsqueeze(1)
            c0 = c0.unsqueeze(1) if c0 is not None else None
    finals: list[State] = []
    h = seq
    for layer in range(m.num_layers):
        w = {name: getattr(m, f"{name}_l{layer}").detach() for name in
             ("weight_ih", "weight_hh", *(("bias_ih", "bias_hh") if m.bias else ()))}
        state: State = (h0[layer], c0[layer]) if lstm and c0 is not None else (h0[layer],)
        top = layer == m.num_layers - 1
        if top:  # the one leaf that needs a gradient: each h_t then has a grad_fn
            state = tuple(s.detach().requires_grad_() for s in state)
        states, last = run_layer(CELLS[m.mode], h, w["weight_ih"], w.get("bias_ih"),
                                 w["weight_hh"], w.get("bias_hh"), state,
                                 tap if top else None)
        h = torch.stack(states, dim=1)
        finals.append(last)
    out = h if not batched else (h if m.batch_first else h.transpose(0, 1))
    h_n = torch.stack([s[0] for s in finals])
    c_n = torch.stack([s[1] for s in finals]) if lstm else None
    if not batched:
        out, h_n = out.squeeze(0), h_n.squeeze(1)
        c_n = c_n.squeeze(1) if c_n is not None else None
    return out, ((h_n, c_n) if lstm else h_n)
