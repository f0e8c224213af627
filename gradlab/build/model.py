"""`build_model(cfg.model, n_in, n_out)`: the network a config describes, initialised, with
the probe points it declares (`probed.Built`). One builder per model kind.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from gradlab.build.initialisers import init_bias, init_weight
from gradlab.build.mlp import MLP, mlp
from gradlab.build.probed import Built, ProbedLayer
from gradlab.build.recurrent import build_recurrent
from gradlab.build.stepwise import time_steps
from gradlab.config import ModelConfig


def build_model(cfg: ModelConfig, n_in: int, n_out: int) -> Built:
    """The network a config describes, initialised, with its probed layers in order."""
    if cfg.kind != "mlp":
        model, layers = build_recurrent(cfg, n_in, n_out)
        return Built(model, layers, time_steps(cast(nn.RNNBase, model.rnns[-1])))
    net = mlp(n_in, n_out, cfg.depth, cfg.width, cfg.activation, cfg.norm, cfg.residual, cfg)
    hidden = [cast(nn.Linear, linear) for linear in net.linears]
    for linear in hidden:
        init_weight(linear.weight, cfg.init, cfg.activation, _param(cfg))
        init_bias(linear.bias, cfg.bias_init)
    if cfg.head_init is not None:  # the read-out has no activation after it: a linear gain
        init_weight(net.head.weight, cfg.head_init, "identity")
    else:
        init_weight(net.head.weight, cfg.init, cfg.activation, _param(cfg))
    init_bias(net.head.bias, cfg.bias_init)
    if cfg.residual and cfg.residual_init == "zero":
        zero_block_ends(net)
    linears = [*hidden, net.head]
    names = [f"fc{i + 1}" for i in range(cfg.depth)] + ["head"]
    acts = [*net.acts, None]  # the head has no activation of its own
    return Built(net, [ProbedLayer(n, cast(nn.Parameter, lin.weight), act, lin)
                       for n, lin, act in zip(names, linears, acts)])


@torch.no_grad()
def zero_block_ends(net: MLP) -> None:
    """Each residual block's last layer starts at 0, so every block starts as the identity
    (the zero-init of Fixup, SkipInit and ReZero: Zhang et al. 2019, De & Smith 2020,
    Bachlechner et al. 2020)."""
    for i in net.block_ends:
        linear = cast(nn.Linear, net.linears[i])
        linear.weight.zero_()
        linear.bias.zero_()


def _param(cfg: ModelConfig) -> float:
    """The activation's own parameter its gain depends on: a negative slope, or ELU's alpha."""
    return {"leaky_relu": cfg.negative_slope, "prelu": cfg.prelu_init,
            "elu": cfg.elu_alpha}.get(cfg.activation, 0.0)
