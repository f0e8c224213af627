"""`build_model(cfg.model, n_in, n_out)`: the network a config describes, initialised, with
the probe points it declares (`probed.Built`). One builder per model kind.
"""

from __future__ import annotations

from collections.abc import Callable

from gradlab.build.initialisers import init_bias, init_weight
from gradlab.build.mlp import mlp
from gradlab.build.probed import Built, ProbedLayer, TimeSteps
from gradlab.build.recurrent import Recurrent, build_recurrent
from gradlab.config import ModelConfig


def build_model(cfg: ModelConfig, n_in: int, n_out: int) -> Built:
    """The network a config describes, initialised, with its probed layers in order."""
    if cfg.kind != "mlp":
        model, layers = build_recurrent(cfg, n_in, n_out)
        return Built(model, layers, TimeSteps(model.state_tap, _unroll_switch(model)))
    net = mlp(n_in, n_out, cfg.depth, cfg.width, cfg.activation, cfg.norm, cfg.residual, cfg)
    linears = [*net.linears, net.head]
    for linear in linears:
        init_weight(linear.weight, cfg.init, cfg.activation, _slope(cfg))
        init_bias(linear.bias, cfg.bias_init)
    names = [f"fc{i + 1}" for i in range(cfg.depth)] + ["head"]
    acts = [*net.acts, None]  # the head has no activation of its own
    return Built(net, [ProbedLayer(n, lin.weight, act)
                       for n, lin, act in zip(names, linears, acts)])


def _unroll_switch(model: Recurrent) -> Callable[[bool], None]:
    def unroll(on: bool) -> None:
        model.unroll_top = on

    return unroll


def _slope(cfg: ModelConfig) -> float:
    if cfg.activation == "leaky_relu":
        return cfg.negative_slope
    return cfg.prelu_init if cfg.activation == "prelu" else 0.0
