"""Initialisation schemes, one table keyed by the names `config.schema.InitScheme` allows.

`init_weight(W, cfg, nonlinearity)` fills one weight matrix in place; `init_bias` does the
same for a bias. `default` leaves PyTorch's own initialisation untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from gradlab.config import BiasInitConfig, InitConfig

# The nonlinearity names torch's gain tables know (`InitConfig.nonlinearity` allows the same).
GainName = Literal["relu", "leaky_relu", "linear", "sigmoid", "tanh", "selu"]

# The nonlinearity name torch's gain tables know for each activation (for xavier/kaiming).
GAIN_NAME: dict[str, GainName] = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leaky_relu",
    "prelu": "leaky_relu", "elu": "relu", "selu": "selu", "gelu": "relu", "identity": "linear",
}

# Fills W in place; whatever it returns (nn.init's functions return W) is ignored.
Initialiser = Callable[[torch.Tensor, InitConfig, GainName, float], object]


def _kaiming(fill: Callable[..., torch.Tensor]) -> Initialiser:
    def init(W: torch.Tensor, cfg: InitConfig, nonlinearity: GainName, slope: float) -> None:
        fill(W, a=slope, mode=cfg.mode, nonlinearity=nonlinearity)

    return init


INITIALISERS: dict[str, Initialiser] = {
    "default": lambda W, cfg, nl, slope: None,
    "zeros": lambda W, cfg, nl, slope: nn.init.zeros_(W),
    "constant": lambda W, cfg, nl, slope: nn.init.constant_(W, cfg.value),
    "normal": lambda W, cfg, nl, slope: nn.init.normal_(W, cfg.mean, cfg.std),
    "uniform": lambda W, cfg, nl, slope: nn.init.uniform_(W, cfg.low, cfg.high),
    "xavier_uniform": lambda W, cfg, nl, slope: nn.init.xavier_uniform_(
        W, cfg.gain * nn.init.calculate_gain(nl, slope)),
    "xavier_normal": lambda W, cfg, nl, slope: nn.init.xavier_normal_(
        W, cfg.gain * nn.init.calculate_gain(nl, slope)),
    "kaiming_uniform": _kaiming(nn.init.kaiming_uniform_),
    "kaiming_normal": _kaiming(nn.init.kaiming_normal_),
    "orthogonal": lambda W, cfg, nl, slope: nn.init.orthogonal_(W, cfg.gain),
    "identity": lambda W, cfg, nl, slope: nn.init.eye_(W),
}


@torch.no_grad()
def init_weight(W: torch.Tensor, cfg: InitConfig, activation: str, slope: float = 0.01) -> None:
    """Fill W in place. The gain follows `cfg.nonlinearity`, else the model's activation.

    Xavier uses the activation's gain only when `gain` is set through `nonlinearity`;
    by default it is the plain Glorot scheme (gain 1), as in Glorot & Bengio (2010).
    """
    nonlinearity: GainName = cfg.nonlinearity or GAIN_NAME[activation]
    if cfg.scheme.startswith("xavier") and cfg.nonlinearity is None:
        nonlinearity = "linear"
    INITIALISERS[cfg.scheme](W, cfg, nonlinearity, slope)


@torch.no_grad()
def init_bias(b: torch.Tensor | None, cfg: BiasInitConfig) -> None:
    """Fill a bias in place: `default` keeps PyTorch's, `zeros`, or `constant` value."""
    if b is None or cfg.scheme == "default":
        return
    nn.init.constant_(b, 0.0 if cfg.scheme == "zeros" else cfg.value)
