"""Sequence tasks (adding, copy, digits read row by row) and the recurrent models (RNN, LSTM, GRU).

`load_sequence_data(cfg, rng)` builds a task as a `data.Dataset` with x of shape
(n, time, features); `build_recurrent(cfg, n_in, n_out)` builds the network and its probed
weight matrices. On logged steps (`model.capture = True`) the top layer is unrolled one time
step at a time with the same parameters, so the probe can read ‖∂L/∂h_t‖ for every t.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gradlab.config import AddingData, CopyData, DigitsSequenceData, ModelConfig
from gradlab.data import Dataset
from gradlab.init import init_bias, init_weight
from gradlab.models import ProbedLayer

# ---------------------------------------------------------------- tasks


def load_sequence_data(cfg: AddingData | CopyData | DigitsSequenceData,
                       rng: np.random.Generator) -> Dataset:
    """The sequence task a data config names, split into train and test by `rng`."""
    if cfg.kind == "adding":
        x, y = adding_problem(cfg.n_samples, cfg.length, rng)
        data = _split(x, y, "regression", 1, cfg.test_fraction, rng)
        # Predicting the mean sum 1 scores the variance of a sum of two U(0,1): 2/12 ≈ 0.167.
        baseline = float(((data.y_test - 1.0) ** 2).mean())
        return _with_baseline(data, baseline)
    if cfg.kind == "copy":
        x, y = copy_task(cfg.n_samples, cfg.length, cfg.n_symbols, cfg.n_recall, rng)
        data = _split(x, y, "classification", cfg.n_symbols + 1, cfg.test_fraction, rng)
        # Without memory the best is: blank until the recall, then a uniform guess over symbols.
        total = y.shape[1]
        return _with_baseline(data, cfg.n_recall * float(np.log(cfg.n_symbols)) / total)
    x, y = digits_rows()
    data = _split(x, y, "classification", 10, cfg.test_fraction, rng)
    return _standardised(data)


def adding_problem(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997, as in Le et al. 2015).

    Channel 0 holds values drawn from U(0, 1), channel 1 marks two of them: one in the first
    half of the sequence and one in the second. The target is the sum of the marked values.
    """
    values = rng.uniform(0.0, 1.0, size=(n, length))
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=2)  # (n, time, 2)
    y = (values[rows, first] + values[rows, second])[:, None]  # (n, 1)
    return x, y


def copy_task(n: int, length: int, n_symbols: int, n_recall: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Delayed recall: see `n_recall` symbols, wait `length` steps, then reproduce them.

    The sequence has n_recall + length + n_recall steps. Inputs are one-hot over the symbols
    plus a blank and a go marker (on the last waiting step); targets are class 0 (blank)
    except in the last n_recall steps, which hold the symbols (classes 1..n_symbols). Each
    symbol is recalled `length + n_recall` steps after it was seen.
    """
    total = n_recall + length + n_recall
    blank, go = n_symbols, n_symbols + 1
    symbols = rng.integers(0, n_symbols, size=(n, n_recall))
    tokens = np.full((n, total), blank)
    tokens[:, :n_recall] = symbols
    tokens[:, n_recall + length - 1] = go
    x = np.eye(n_symbols + 2)[tokens]  # (n, time, n_symbols + 2)
    y = np.zeros((n, total), dtype=np.int64)  # (n, time)
    y[:, -n_recall:] = symbols + 1
    return x, y


def digits_rows() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits read row by row: 8 time steps of 8 pixels."""
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)  # (1797, 8, 8)


def _split(x: np.ndarray, y: np.ndarray, task: str, n_out: int, test_fraction: float,
           rng: np.random.Generator) -> Dataset:
    n = len(x)
    order = rng.permutation(n)
    n_test = max(1, round(n * test_fraction))
    test, train = order[:n_test], order[n_test:]
    x_t = torch.tensor(x, dtype=torch.float32)
    y_t = torch.tensor(y, dtype=torch.float32 if task == "regression" else torch.long)
    return Dataset(x_t[train], y_t[train], x_t[test], y_t[test], task,  # type: ignore[arg-type]
                   x.shape[2], n_out)


def _with_baseline(data: Dataset, baseline: float) -> Dataset:
    return Dataset(data.x_train, data.y_train, data.x_test, data.y_test, data.task, data.n_in,
                   data.n_out, baseline)


def _standardised(data: Dataset) -> Dataset:
    """Scale each (time step, feature) by the training split's mean and std."""
    mean, std = data.x_train.mean(dim=0), data.x_train.std(dim=0)
    std = torch.where(std == 0, torch.ones_like(std), std)
    return Dataset((data.x_train - mean) / std, data.y_train, (data.x_test - mean) / std,
                   data.y_test, data.task, data.n_in, data.n_out, data.baseline_loss)


# ---------------------------------------------------------------- models

# A cell maps (x_t W_ihᵀ + b_ih, state, W_hh, b_hh) to the next state; state[0] is h_t and an
# LSTM's state is (h_t, c_t).
State = tuple[torch.Tensor, ...]
Cell = Callable[[torch.Tensor, State, torch.Tensor, torch.Tensor], State]
MODULES: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
ACT = {"tanh": torch.tanh, "relu": torch.relu}


def _rnn_cell(act: Callable[[torch.Tensor], torch.Tensor]) -> Cell:
    def step(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor) -> State:
        return (act(xi + F.linear(state[0], W, b)),)

    return step


def _lstm_cell(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor) -> State:
    h, c = state
    gates = xi + F.linear(h, W, b)  # (batch, 4 hidden): i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(xi: torch.Tensor, state: State, W: torch.Tensor, b: torch.Tensor) -> State:
    h = state[0]
    xr, xz, xn = xi.chunk(3, dim=1)
    hr, hz, hn = F.linear(h, W, b).chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return ((1 - z) * n + z * h,)


class Recurrent(nn.Module):
    """`depth` single-layer RNN/LSTM/GRU modules, then a linear read-out.

    Normally each layer runs as PyTorch's fused module. When `capture` is set (the probe's
    logged steps) the top layer is unrolled with the same equations and parameters, and its
    hidden states h_1..h_T are kept in `time_states` with their gradients retained.
    """

    def __init__(self, kind: str, n_in: int, n_out: int, hidden: int, depth: int,
                 nonlinearity: str = "tanh", readout: str = "last"):
        super().__init__()
        extra: dict[str, Any] = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        self.rnns = nn.ModuleList(
            MODULES[kind](n_in if i == 0 else hidden, hidden, batch_first=True, **extra)
            for i in range(depth))
        self.head = nn.Linear(hidden, n_out)
        self.kind, self.readout = kind, readout
        self.cell: Cell = {"rnn": _rnn_cell(ACT[nonlinearity]), "lstm": _lstm_cell,
                           "gru": _gru_cell}[kind]
        self.capture = False
        self.time_states: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, time, features)
        h = x
        for rnn in self.rnns[:-1]:
            h, _ = rnn(h)
        if self.capture and torch.is_grad_enabled():
            self.time_states = self.unroll(h)
            h = torch.stack(self.time_states, dim=1)
        else:
            self.time_states = []
            h, _ = self.rnns[-1](h)
        # h: (batch, time, hidden)
        return self.head(h[:, -1] if self.readout == "last" else h)

    def unroll(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The top layer's hidden states h_1..h_T, one step at a time, gradients retained."""
        top: nn.RNNBase = self.rnns[-1]  # type: ignore[assignment]
        W_ih, b_ih, W_hh, b_hh = (getattr(top, name) for name in  # registered by name
                                  ("weight_ih_l0", "bias_ih_l0", "weight_hh_l0", "bias_hh_l0"))
        xi = F.linear(x, W_ih, b_ih)  # (batch, time, gates · hidden)
        zeros = x.new_zeros(x.shape[0], top.hidden_size)
        state: State = (zeros, zeros) if self.kind == "lstm" else (zeros,)
        states = []
        for t in range(x.shape[1]):
            state = self.cell(xi[:, t], state, W_hh, b_hh)
            state[0].retain_grad()  # the probe reads ‖∂L/∂h_t‖ after backward
            states.append(state[0])
        return states


def build_recurrent(cfg: ModelConfig, n_in: int, n_out: int) -> tuple[nn.Module, list[ProbedLayer]]:
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
