"""A model's own `nn.RNN`/`nn.LSTM`/`nn.GRU`, run one time step at a time when a probe asks.

PyTorch's fused recurrent modules never hold h_1..h_T as tensors of their own, so ‖∂L/∂h_t‖
(the total derivative, through the read-out and every later step) cannot be read from them.
`time_steps(module)` declares a `TimeSteps` for such a module without changing it: while a
probe has `unroll(True)` in effect, a forward hook (run before any other hook on the module)
computes the module's output again with its own parameters and PyTorch's equations, one
time step at a time (`recurrent.run_layer`), passes each h_t of the top layer through the
tap, and returns that output in place of the fused one: the same values to float rounding,
with a graph through every h_t. `unroll(False)` removes the hook.

Not unrolled (the fused output is kept, and no h_t reaches the tap): bidirectional modules,
`proj_size`, a `PackedSequence` input, and a stack of layers with dropout between them in
training mode (the fused module draws its own masks).
"""

from __future__ import annotations

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
        self.cell = CELLS[module.mode]
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
            return None  # the fused output stands
        return self.unrolled(x, hx)

    def unrolled(self, x: torch.Tensor, hx: Any) -> tuple[torch.Tensor, Any]:
        """The module's (output, h_n) or (output, (h_n, c_n)), a time step at a time."""
        m = self.module
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
            suffix = f"_l{layer}"
            bias = (getattr(m, f"bias_ih{suffix}"), getattr(m, f"bias_hh{suffix}")) \
                if m.bias else (None, None)
            state: State = (h0[layer], c0[layer]) if lstm and c0 is not None else (h0[layer],)
            top = layer == m.num_layers - 1
            states, last = run_layer(self.cell, h, getattr(m, f"weight_ih{suffix}"), bias[0],
                                     getattr(m, f"weight_hh{suffix}"), bias[1], state,
                                     self.tap if top else None)
            h = torch.stack(states, dim=1)
            finals.append(last)
        out = h if not batched else (h if m.batch_first else h.transpose(0, 1))
        h_n = torch.stack([s[0] for s in finals])
        c_n = torch.stack([s[1] for s in finals]) if lstm else None
        if not batched:
            out, h_n = out.squeeze(0), h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return out, ((h_n, c_n) if lstm else h_n)
