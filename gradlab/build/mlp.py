"""The MLP family: Linear → norm → activation, `depth` times, then a linear head.

`mlp(n_in, n_out, depth, width, activation, norm, residual, cfg)` builds the network;
activations and norms are one table each, keyed by the names the config allows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gradlab.config import ModelConfig

ACTIVATIONS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "sigmoid": lambda m: nn.Sigmoid(),
    "tanh": lambda m: nn.Tanh(),
    "relu": lambda m: nn.ReLU(),
    "leaky_relu": lambda m: nn.LeakyReLU(m.negative_slope),
    "prelu": lambda m: nn.PReLU(init=m.prelu_init),
    "elu": lambda m: nn.ELU(m.elu_alpha),
    "selu": lambda m: nn.SELU(),
    "gelu": lambda m: nn.GELU(),
    "identity": lambda m: nn.Identity(),
}

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda width: nn.Identity(),
    "batch": lambda width: nn.BatchNorm1d(width),
    "layer": lambda width: nn.LayerNorm(width),
}


class MLP(nn.Module):
    """Linear → norm → activation, `depth` times, then a linear head (depth 0: the head alone,
    a linear or logistic model on the inputs).

    With residual blocks, the hidden layers after the first are grouped `block` at a time and
    each group's input is added back. `style` "post" is the 2015 ResNet block, whose sum passes
    the activation, h ← act(h + s·norm(W₂ act(norm(W₁ h)))); "pre" keeps the skip free of any
    activation (He et al. 2016, "Identity Mappings"): the stream carries pre-activations and a
    block adds its branch, s ← s + c·W₂ act(norm(W₁ act(norm(s)))), with the head reading
    act(norm(s)). `scale` is the branch constant c. In both styles each hidden layer's
    activation module is applied to that layer's own output (its input is the layer's
    pre-activation), and each Linear's output is the layer's z_l: where a probe attaches.
    """

    def __init__(self, n_in: int, n_out: int, depth: int, width: int,
                 make_act: Callable[[], nn.Module], make_norm: Callable[[int], nn.Module],
                 residual_block: int = 0, style: str = "post", scale: float = 1.0):
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(n_in if i == 0 else width, width) for i in range(depth))
        self.norms = nn.ModuleList(make_norm(width) for _ in range(depth))
        self.acts = nn.ModuleList(make_act() for _ in range(depth))
        self.head = nn.Linear(width if depth else n_in, n_out)
        self.style, self.scale = style, scale
        self.block_starts: set[int] = set()
        self.block_ends: set[int] = set()
        if residual_block:
            for start in range(1, depth - residual_block + 1, residual_block):
                self.block_starts.add(start)
                self.block_ends.add(start + residual_block - 1)

    def hidden(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """The output of hidden layer `upto` (1-based; all of them by default): the features
        the head (or, in pretraining, the next layer) reads."""
        if self.style == "pre" and self.block_starts:
            return self._hidden_pre(x, upto)
        h, skip = x, x
        for i, (linear, norm, act) in enumerate(zip(self.linears, self.norms, self.acts)):
            if i == upto:
                break
            if i in self.block_starts:
                skip = h
            z = norm(linear(h))
            if i in self.block_ends:
                z = self.scale * z + skip if self.scale != 1.0 else z + skip
            h = act(z)
        return h

    def _hidden_pre(self, x: torch.Tensor, upto: int | None) -> torch.Tensor:
        s = self.linears[0](x)  # the stem: the stream starts as the first layer's z
        skip = s
        for i in range(1, len(self.linears)):
            if i == upto:
                break
            if i in self.block_starts:
                skip = s
            z = self.linears[i](self.acts[i - 1](self.norms[i - 1](s)))
            s = skip + self.scale * z if i in self.block_ends else z
        last = (upto or len(self.linears)) - 1
        return self.acts[last](self.norms[last](s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) → (batch, out)
        return self.head(self.hidden(x) if len(self.linears) else x)


def mlp(n_in: int, n_out: int, depth: int, width: int, activation: str = "relu",
        norm: str = "none", residual: bool = False, cfg: ModelConfig | None = None) -> MLP:
    """Build an MLP; `cfg` supplies the activation's own settings (slope, alpha) and the
    residual style and scale."""
    cfg = cfg or ModelConfig(depth=depth, width=width, activation=activation)  # type: ignore[arg-type]
    block = cfg.residual_block if residual else 0
    return MLP(n_in, n_out, depth, width, lambda: ACTIVATIONS[activation](cfg),
               NORMS[norm], block, cfg.residual_style, cfg.residual_scale)
