"""The recurrent models: `depth` RNN/LSTM/GRU layers and a linear read-out.

`build_recurrent(cfg, n_in, n_out)` builds the network, initialised, with its probed weight
matrices (each layer's input-to-hidden and hidden-to-hidden, then the head). `CELLS` and
`run_layer` are PyTorch's recurrent equations one time step at a time, for `stepwise`'s
shadow of a fused module, through which a probe reads ‖∂L/∂h_t‖ for every t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.build.initialisers import init_bias, init_weight
from gradlab.build.probed import ProbedLayer
from gradlab.config import ModelConfig
from gradlab.config.schema import GATES

# A cell maps (x_t W_ihᵀ + b_ih, state, W_hh, b_hh) to the next state; state[0] is h_t and an
# LSTM's state is (h_t, c_t).
State = tuple[torch.Tensor, ...]
Cell = Callable[[torch.Tensor, State, torch.Tensor, torch.Tensor | None], State]
MODULES: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _rnn_cell(act: Callable[[torch.Tensor], torch.Tensor]) -> Cell:
    def step(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor | None) -> State:
        return (act(xi + F.linear(state[0], W, b)),)

    return step


def _lstm_cell(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor | None) -> State:
    h, c = state
    gates = xi + F.linear(h, W, b)  # (batch, 4 hidden): i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor | None) -> State:
    h = state[0]
    xr, xz, xn = xi.chunk(3, dim=1)
    hr, hz, hn = F.linear(h, W, b).chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return ((1 - z) * n + z * h,)


# nn.RNNBase.mode → its cell, in PyTorch's equations and gate order
CELLS: dict[str, Cell] = {"RNN_TANH": _rnn_cell(torch.tanh), "RNN_RELU": _rnn_cell(torch.relu),
                          "LSTM": _lstm_cell, "GRU": _gru_cell}


def run_layer(cell: Cell, x: torch.Tensor, W_ih: torch.Tensor, b_ih: torch.Tensor | None,
              W_hh: torch.Tensor, b_hh: torch.Tensor | None, state: State,
              tap: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> tuple[list[torch.Tensor], State]:
    """One recurrent layer run one time step at a time on x (batch, time, features) from
    `state`: its hidden states h_1..h_T (each through `tap`, if given) and its last state."""
    xi = F.linear(x, W_ih, b_ih)  # (batch, time, gates · hidden)
    states = []
    for t in range(x.shape[1]):
        state = cell(xi[:, t], state, W_hh, b_hh)
        if tap is not None:
            state = (tap(state[0]), *state[1:])
        states.append(state[0])
    return states, state


class Recurrent(nn.Module):
    """`depth` single-layer RNN/LSTM/GRU modules (PyTorch's fused ones), then a linear
    read-out. A probe reads ‖∂L/∂h_t‖ of the top layer through `stepwise.time_steps`, which
    changes nothing the model computes."""

    def __init__(self, kind: str, n_in: int, n_out: int, hidden: int, depth: int,
                 nonlinearity: str = "tanh", readout: str = "last"):
        super().__init__()
        extra: dict[str, Any] = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.rnns = nn.ModuleList(
            MODULES[kind](n_in if i == 0 else hidden, hidden, batch_first=True, **extra)
            for i in range(depth))
        self.head = nn.Linear(hidden, n_out)
        self.kind, self.readout = kind, readout

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, time, features)
        h = x
        for rnn in self.rnns:
            h, _ = rnn(h)
        # h: (batch, time, hidden)
        return self.head(h[:, -1] if self.readout == "last" else h)


def build_recurrent(cfg: ModelConfig, n_in: int, n_out: int) -> tuple[Recurrent, list[ProbedLayer]]:
    """An RNN/LSTM/GRU with hidden size `width` and `depth` layers, initialised, and its probed
    layers: each layer's input-to-hidden and hidden-to-hidden matrices, then the head."""
    model = Recurrent(cfg.kind, n_in, n_out, cfg.width, cfg.depth, cfg.rnn_nonlinearity,
                      cfg.readout)
    act = cfg.rnn_nonlinearity if cfg.kind == "rnn" else "tanh"
    probed = []
    for i, rnn in enumerate(model.rnns):
        for part, init in (("ih", cfg.init), ("hh", cfg.recurrent_init)):
            W = getattr(rnn, f"weight_{part}_l0")
            for block in W.chunk(GATES[cfg.kind], dim=0):  # each gate is its own map
                init_weight(block, init, act)
            init_bias(getattr(rnn, f"bias_{part}_l0"), cfg.bias_init)
            probed.append(ProbedLayer(f"l{i + 1}.{part}", W))
        if cfg.forget_bias is not None:
            set_forget_bias(cast(nn.RNNBase, rnn), cfg.forget_bias)
    init_weight(model.head.weight, cfg.init, "identity")
    init_bias(model.head.bias, cfg.bias_init)
    probed.append(ProbedLayer("head", cast(nn.Parameter, model.head.weight)))
    return model, probed


@torch.no_grad()
def set_forget_bias(lstm: nn.RNNBase, value: float) -> None:
    """Give an LSTM's forget gate the bias `value` (PyTorch orders the gates i, f, g, o).

    The input-to-hidden bias carries it and the hidden-to-hidden one is zeroed, so the gate
    starts at sigmoid(value): with 1.0 the cell keeps 73% of its content per step instead
    of about half (Gers et al. 2000; Jozefowicz et al. 2015).
    """
    n = lstm.hidden_size
    for name, v in (("bias_ih_l0", value), ("bias_hh_l0", 0.0)):
        getattr(lstm, name)[n:2 * n] = v
