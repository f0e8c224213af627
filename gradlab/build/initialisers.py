"""Initialisation schemes, one table keyed by the names `config.schema.InitScheme` allows.

`init_weight(W, cfg, activation, param)` fills one weight matrix in place; `init_bias` does the
same for a bias. `default` leaves PyTorch's own initialisation untouched. `gain(name, param)`
is PyTorch's `calculate_gain`, extended to ELU and GELU by the variance-preserving gain.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradlab.config import BiasInitConfig, InitConfig
from gradlab.config.schema import GAIN_NAME

# Fills W in place with `gain` (the nonlinearity's gain times the config's own `gain`).
Initialiser = Callable[[torch.Tensor, InitConfig, float], object]


def _phi(name: str, param: float) -> Callable[[np.ndarray], np.ndarray]:
    if name == "elu":
        return lambda z: np.where(z > 0, z, param * np.expm1(np.minimum(z, 0)))
    if name == "gelu":  # exact: z Φ(z)
        erf = np.vectorize(math.erf)
        return lambda z: z * 0.5 * (1 + erf(z / math.sqrt(2)))
    raise ValueError(name)


def variance_preserving_gain(name: str, param: float = 1.0) -> float:
    """1/√E[φ(z)²], z ~ N(0, 1): the gain that keeps a unit pre-activation variance from layer
    to layer (√2 for ReLU, the He et al. 2015 argument), by quadrature on a fine grid."""
    z = np.linspace(-12.0, 12.0, 24001)
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    second_moment = float(np.trapezoid(_phi(name, param)(z) ** 2 * density, z))
    return 1.0 / math.sqrt(second_moment)


def gain(name: str, param: float = 0.0) -> float:
    """The gain of a nonlinearity: PyTorch's table, plus ELU (param: alpha) and GELU."""
    if name in ("elu", "gelu"):
        return variance_preserving_gain(name, param if name == "elu" else 1.0)
    return nn.init.calculate_gain(name, param)  # type: ignore[arg-type]


def _fans(W: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(W.shape[2:]) if W.dim() > 2 else 1
    fan_in = W.shape[1] * receptive if W.dim() > 1 else W.shape[0]
    return fan_in, W.shape[0] * receptive


def _kaiming(uniform: bool) -> Initialiser:
    """He et al. (2015): std = gain / √fan, with fan_in or fan_out as `mode` says."""

    def init(W: torch.Tensor, cfg: InitConfig, g: float) -> None:
        fan_in, fan_out = _fans(W)
        std = g / math.sqrt(fan_in if cfg.mode == "fan_in" else fan_out)
        if uniform:
            nn.init.uniform_(W, -math.sqrt(3.0) * std, math.sqrt(3.0) * std)
        else:
            nn.init.normal_(W, 0.0, std)

    return init


INITIALISERS: dict[str, Initialiser] = {
    "default": lambda W, cfg, g: None,
    "zeros": lambda W, cfg, g: nn.init.zeros_(W),
    "constant": lambda W, cfg, g: nn.init.constant_(W, cfg.value),
    "normal": lambda W, cfg, g: nn.init.normal_(W, cfg.mean, cfg.std),
    "uniform": lambda W, cfg, g: nn.init.uniform_(W, cfg.low, cfg.high),
    "xavier_uniform": lambda W, cfg, g: nn.init.xavier_uniform_(W, g),
    "xavier_normal": lambda W, cfg, g: nn.init.xavier_normal_(W, g),
    "kaiming_uniform": _kaiming(uniform=True),
    "kaiming_normal": _kaiming(uniform=False),
    "orthogonal": lambda W, cfg, g: nn.init.orthogonal_(W, cfg.gain),
    "identity": lambda W, cfg, g: nn.init.eye_(W),
}


@torch.no_grad()
def init_weight(W: torch.Tensor, cfg: InitConfig, activation: str, param: float = 0.0) -> None:
    """Fill W in place. `param` is the activation's own parameter (the negative slope of a
    leaky ReLU or PReLU, the alpha of an ELU).

    Kaiming uses the gain of `cfg.nonlinearity`, else the activation's (`GAIN_NAME`), times
    `cfg.gain`. Xavier uses the activation's gain only when `nonlinearity` is set; by default it
    is the plain Glorot scheme (gain 1, times `cfg.gain`), as in Glorot & Bengio (2010).
    """
    name = cfg.nonlinearity or GAIN_NAME[activation]
    if cfg.scheme.startswith("xavier") and cfg.nonlinearity is None:
        name = "linear"
    g = cfg.gain * gain(name, param) if cfg.scheme.startswith(("xavier", "kaiming")) else 1.0
    INITIALISERS[cfg.scheme](W, cfg, g)


@torch.no_grad()
def init_bias(b: torch.Tensor | None, cfg: BiasInitConfig) -> None:
    """Fill a bias in place: `default` keeps PyTorch's; `zeros`; `constant` value; `normal`."""
    if b is None or cfg.scheme == "default":
        return
    if cfg.scheme == "normal":
        nn.init.normal_(b, cfg.mean, cfg.std)
    else:
        nn.init.constant_(b, 0.0 if cfg.scheme == "zeros" else cfg.value)
