"""The MLP's residual wiring (which layers start and end blocks, and the forward pass against a
hand-written one on the same weights) and the probe points `build_model` declares for it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import tiny_config
from torch.nn import functional as F

from gradlab.build.model import build_model
from gradlab.build.probed import Built

N_IN, N_OUT, WIDTH = 8, 3, 6


def built_mlp(**model: Any) -> Built:
    cfg = tiny_config(model={"depth": 5, "width": WIDTH, "activation": "tanh", **model})
    torch.manual_seed(0)
    built = build_model(cfg.model, N_IN, N_OUT)
    with torch.no_grad():  # biases and norm parameters away from their defaults, so order shows
        for p in built.model.parameters():
            if p.dim() == 1:
                p.copy_(0.3 * torch.randn_like(p))
    return built


@pytest.mark.parametrize(("depth", "block", "starts", "ends"), [
    (5, 2, {1, 3}, {2, 4}),
    (6, 2, {1, 3}, {2, 4}),  # fc6 is left over: a plain layer
    (5, 3, {1}, {3}),
    (7, 3, {1, 4}, {3, 6}),
    (2, 2, set(), set()),  # one hidden layer after the first: too few for a block
    (3, 1, {1, 2}, {1, 2}),
])
def test_block_starts_and_ends(depth: int, block: int, starts: set[int], ends: set[int]) -> None:
    net: Any = built_mlp(depth=depth, residual=True, residual_block=block).model
    assert net.block_starts == starts and net.block_ends == ends


def test_no_blocks_without_residual() -> None:
    net: Any = built_mlp(residual=False, residual_block=2).model
    assert net.block_starts == set() and net.block_ends == set()


def hand_forward(net: Any, x: torch.Tensor, norm: str, residual: bool) -> tuple[torch.Tensor, list]:
    """h ← act(norm(W₁ x)); then per block h ← act(h + norm(W₂ act(norm(W₁ h)))); then the head.
    Also returns each hidden layer's pre-activation."""

    def layer(i: int, h: torch.Tensor) -> torch.Tensor:
        lin, nm = net.linears[i], net.norms[i]
        z = F.linear(h, lin.weight, lin.bias)
        if norm == "layer":
            z = F.layer_norm(z, (WIDTH,), nm.weight, nm.bias, nm.eps)
        return z

    pre: list[torch.Tensor] = []

    def act(z: torch.Tensor) -> torch.Tensor:
        pre.append(z)
        return torch.tanh(z)

    h = act(layer(0, x))
    if residual:  # depth 5, blocks of 2: (fc2, fc3) and (fc4, fc5)
        for first in (1, 3):
            h = act(h + layer(first + 1, act(layer(first, h))))
    else:
        for i in range(1, 5):
            h = act(layer(i, h))
    return F.linear(h, net.head.weight, net.head.bias), pre


@pytest.mark.parametrize("norm", ["none", "layer"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_forward_matches_a_hand_forward(norm: str, residual: bool) -> None:
    net: Any = built_mlp(norm=norm, residual=residual, residual_block=2,
                         residual_style="post").model
    x = torch.randn(10, N_IN, generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []
    hooks = [a.register_forward_hook(lambda m, inp, out: seen.append(inp[0])) for a in net.acts]
    with torch.no_grad():
        out = net(x)
        expected, pre = hand_forward(net, x, norm, residual)
        other, _ = hand_forward(net, x, norm, not residual)
    for h in hooks:
        h.remove()
    assert out.shape == (10, N_OUT)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, other, atol=1e-3)  # the skips change the output
    # each activation module sees its layer's pre-activation, skip included
    assert len(seen) == 5 and all(torch.allclose(s, p, atol=1e-6) for s, p in zip(seen, pre))


def test_hidden_upto_stops_after_that_layer() -> None:
    net: Any = built_mlp(residual=True, residual_block=2).model
    x = torch.randn(4, N_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        first = torch.tanh(F.linear(x, net.linears[0].weight, net.linears[0].bias))
        assert torch.allclose(net.hidden(x, upto=1), first, atol=1e-6)
        assert torch.allclose(net.head(net.hidden(x)), net(x), atol=1e-6)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_probed_layers(residual: bool) -> None:
    built = built_mlp(residual=residual, norm="layer", activation="prelu")
    net: Any = built.model
    layers = built.layers
    assert [p.name for p in layers] == ["fc1", "fc2", "fc3", "fc4", "fc5", "head"]
    assert [p.shape for p in layers] == [(WIDTH, N_IN)] + [(WIDTH, WIDTH)] * 4 + [(N_OUT, WIDTH)]
    linears = [*net.linears, net.head]
    assert all(p.weight is lin.weight for p, lin in zip(layers, linears))
    assert all(p.activation is act for p, act in zip(layers[:-1], net.acts))
    assert all(isinstance(p.activation, torch.nn.PReLU) for p in layers[:-1])
    assert len({id(p.activation) for p in layers[:-1]}) == 5  # one module per layer
    assert layers[-1].activation is None
    assert built.time is None


def hand_forward_pre(net: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
    """Pre-activation blocks (He et al. 2016): s ← W₁ x; per block s ← s + c·W₃ act(norm(W₂
    act(norm(s)))); the head reads act(norm(s)). No activation on the skip path."""

    def branch_layer(i: int, s: torch.Tensor) -> torch.Tensor:  # layer i reads layer i-1's output
        nm, lin = net.norms[i - 1], net.linears[i]
        u = torch.tanh(F.layer_norm(s, (WIDTH,), nm.weight, nm.bias, nm.eps))
        return F.linear(u, lin.weight, lin.bias)

    s = F.linear(x, net.linears[0].weight, net.linears[0].bias)
    for first in (1, 3):  # depth 5, blocks of 2: (fc2, fc3) and (fc4, fc5)
        s = s + scale * branch_layer(first + 1, branch_layer(first, s))
    nm = net.norms[4]
    h = torch.tanh(F.layer_norm(s, (WIDTH,), nm.weight, nm.bias, nm.eps))
    return F.linear(h, net.head.weight, net.head.bias)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_pre_activation_blocks_keep_the_skip_free_of_activations(scale: float) -> None:
    net: Any = built_mlp(norm="layer", residual=True, residual_block=2, residual_style="pre",
                         residual_scale=scale).model
    x = torch.randn(10, N_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(net(x), hand_forward_pre(net, x, scale), atol=1e-6)
        post = built_mlp(norm="layer", residual=True, residual_block=2,
                         residual_style="post").model
        assert not torch.allclose(net(x), post(x), atol=1e-3)


def test_zero_init_makes_every_block_start_as_the_identity() -> None:
    cfg = tiny_config(model={"depth": 5, "width": WIDTH, "activation": "tanh", "residual": True,
                             "residual_init": "zero"})
    net: Any = build_model(cfg.model, N_IN, N_OUT).model
    for i in (2, 4):  # the last layer of each block
        assert not net.linears[i].weight.any() and not net.linears[i].bias.any()
    x = torch.randn(10, N_IN)
    with torch.no_grad():  # the stream after the stem reaches the head unchanged
        s = net.linears[0](x)
        h = net.acts[4](net.norms[4](s))
        assert torch.allclose(net(x), net.head(h), atol=1e-6)


def test_depth_zero_is_a_linear_model_on_the_inputs() -> None:
    cfg = tiny_config(model={"depth": 0})
    built = build_model(cfg.model, N_IN, N_OUT)
    assert [layer.name for layer in built.layers] == ["head"]
    x = torch.randn(4, N_IN)
    head = built.model.head
    with torch.no_grad():
        assert torch.allclose(built.model(x), F.linear(x, head.weight, head.bias))
