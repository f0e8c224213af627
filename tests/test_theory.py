"""Mean-field theory (gradlab.analyse.theory): published values, closed forms, an independent
quadrature (scipy), the config → σw², σb² table, and a measurement on a wide random tanh net."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from gradlab.analyse import theory as T

torch.set_num_threads(1)


def _expect(f: Any, q: float) -> float:
    """E[f(√q z)] by adaptive quadrature in x = √q z, split at the kink x = 0."""
    s = math.sqrt(q)

    def g(x: float) -> float:
        return float(f(np.array(x))) * math.exp(-0.5 * (x / s) ** 2) / (s * math.sqrt(2 * math.pi))

    pieces = [(-40 * s, -s), (-s, 0.0), (0.0, s), (s, 40 * s)]
    return sum(integrate.quad(g, a, b, epsabs=0, epsrel=1e-12, limit=200)[0] for a, b in pieces)


def _config(**model: Any) -> dict[str, Any]:
    base = {"kind": "mlp", "depth": 20, "width": 100, "activation": "tanh", "norm": "none",
            "residual": False, "init": {"scheme": "default"}, "bias_init": {"scheme": "default"}}
    return {"data": {"kind": "teacher"}, "model": {**base, **model}, "pretrain": None}


# --- published values ------------------------------------------------------------------------

def test_relu_at_sigma_w2_two_is_critical() -> None:
    chi = T.chi1("relu", 2.0, 0.0)
    assert chi == pytest.approx(1.0, abs=1e-6)
    assert T.phase(chi) == "critical" and T.depth_scale(1.0) == math.inf
    assert T.critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, abs=1e-6)


def test_tanh_critical_line_matches_schoenholz_2017() -> None:
    assert T.critical_sigma_w2("tanh", 0.05) == pytest.approx(1.76, abs=0.03)
    # σb² = 0: the order-to-chaos transition is at σw² = 1 (Poole et al. 2016), where q* → 0.
    assert T.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-4)


def test_sigmoid_against_independent_quadrature() -> None:
    q_star, chi = T.fixed_point_q("sigmoid", 1.0, 0.0), T.chi1("sigmoid", 1.0, 0.0)
    a = T.Activation("sigmoid")
    q_ref = optimize.brentq(lambda q: _expect(lambda x: a.phi(x) ** 2, q) - q, 0.01, 5.0, xtol=1e-14)
    chi_ref = _expect(lambda x: a.dphi(x) ** 2, q_ref)
    assert q_star == pytest.approx(q_ref, rel=1e-4)
    assert chi == pytest.approx(chi_ref, rel=1e-4)
    assert chi == pytest.approx(0.056, abs=5e-4)
    assert math.sqrt(chi) == pytest.approx(0.24, abs=5e-3)  # per-layer factor of ‖δ‖
    assert T.phase(chi) == "ordered"


# --- closed forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("sigma_w2,sigma_b2", [(0.5, 0.0), (1.0, 0.1), (1.7, 0.3)])
def test_identity_chi1_is_sigma_w2(sigma_w2: float, sigma_b2: float) -> None:
    assert T.chi1("identity", sigma_w2, sigma_b2) == pytest.approx(sigma_w2, rel=1e-12)


@pytest.mark.parametrize("sigma_w2,sigma_b2", [(0.5, 0.01), (1.0, 0.3), (1.9, 0.05)])
def test_relu_family_closed_forms(sigma_w2: float, sigma_b2: float) -> None:
    q = T.fixed_point_q("relu", sigma_w2, sigma_b2)
    assert q == pytest.approx(sigma_b2 / (1 - sigma_w2 / 2), rel=1e-12)
    assert T.length_map(q, "relu", sigma_w2, sigma_b2) == pytest.approx(q, rel=1e-12)
    assert T.chi1("relu", sigma_w2, sigma_b2) == pytest.approx(sigma_w2 / 2, rel=1e-12)
    for a in (0.01, 0.2, 0.5):
        leaky = T.Activation("leaky_relu", negative_slope=a)
        assert T.chi1(leaky, sigma_w2, sigma_b2) == pytest.approx(sigma_w2 * (1 + a * a) / 2, rel=1e-12)
    prelu = T.Activation("prelu", prelu_init=0.25)
    assert T.chi1(prelu, sigma_w2, sigma_b2) == pytest.approx(sigma_w2 * (1 + 0.0625) / 2, rel=1e-12)


def test_q_star_zero_gives_the_slope_at_zero() -> None:
    assert T.fixed_point_q("tanh", 0.8, 0.0) == 0.0
    assert T.chi1("tanh", 0.8, 0.0) == pytest.approx(0.8, rel=1e-12)  # σw² φ'(0)²
    assert T.fixed_point_q("relu", 1.5, 0.0) == 0.0
    assert T.chi1("relu", 1.5, 0.0) == pytest.approx(0.75, rel=1e-12)  # the one-sided mean
    assert T.fixed_point_q("relu", 2.5, 0.1) == math.inf


@pytest.mark.parametrize("name,sigma_w2,sigma_b2", [
    ("elu", 1.2, 0.05), ("selu", 1.0, 0.0), ("gelu", 2.0, 0.1), ("tanh", 4.0, 0.05),
    ("tanh", 60.0, 0.0), ("sigmoid", 30.0, 0.2),
])
def test_fixed_point_and_chi1_against_quad(name: str, sigma_w2: float, sigma_b2: float) -> None:
    """Kinks (ELU/SELU) and large q (tanh's E[φ'²] sits within 1/√q of 0) stay accurate."""
    a = T.Activation(name)
    q = T.fixed_point_q(a, sigma_w2, sigma_b2)
    assert sigma_w2 * _expect(lambda x: a.phi(x) ** 2, q) + sigma_b2 == pytest.approx(q, rel=1e-9)
    assert T.chi1(a, sigma_w2, sigma_b2, q) == pytest.approx(
        sigma_w2 * _expect(lambda x: a.dphi(x) ** 2, q), rel=1e-9)


@pytest.mark.parametrize("name,sigma_w2,sigma_b2,limit", [
    ("elu", 2.0, 0.0, math.inf), ("elu", 2.0, 1 / 192, math.inf),  # q grows by ~1 a layer
    ("gelu", 2.0, 0.3, math.inf),  # L(q) − q > 0.26 for every q
    ("tanh", 1.0, 0.0, 0.0),  # q falls like 1/l
])
def test_a_length_map_with_no_fixed_point_ahead_gives_its_limit(name, sigma_w2, sigma_b2,
                                                                  limit) -> None:
    """Where iterating the length map does not converge, q* is where it heads, not its last
    iterate (ELU at σw² = 2 once gave q* 1899, χ₁ 1.009): then χ₁ is the limit there."""
    a = T.Activation(name)
    q = T.fixed_point_q(a, sigma_w2, sigma_b2)
    assert q == limit
    # the premise: the map moves q the same way at every point from 1 on (a ladder to 1e12)
    ladder = np.geomspace(1.0, 1e12, 200) if limit else np.geomspace(1e-12, 1.0, 200)
    steps = [T.length_map(m, a, sigma_w2, sigma_b2) - m for m in ladder]
    assert all(d > 0 for d in steps) if limit else all(d < 0 for d in steps)
    # χ₁ at q* = ∞: σw² times the mean of φ'² over the two half-lines (1 and 0 here): σw²/2
    expected = sigma_w2 / 2 if limit else sigma_w2  # at q* = 0: σw² φ'(0)²
    assert T.chi1(a, sigma_w2, sigma_b2, q) == pytest.approx(expected, rel=1e-9)
    out = T.predict_mlp(_config(activation=name, init={"scheme": "normal",
                                                        "std": math.sqrt(sigma_w2 / 64)},
                                bias_init={"scheme": "normal", "std": math.sqrt(sigma_b2)}
                                if sigma_b2 else {"scheme": "zeros"}, width=64, depth=10))
    assert out["predictable"] and out["q_star"] == (None if limit else 0.0)  # ∞: JSON null
    assert out["predicted_grad_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert not any("slowly" in n for n in out["notes"])


def test_a_net_too_shallow_for_q_star_says_what_its_layers_predict() -> None:
    """init_xavier_tanh (σw² 1, σb² 1/192, 15 layers): q falls from 1 to 0.06 but q* is
    0.055, so χ₁ at q* (0.51 first/last) misses the layers' own χ(q_l) (0.2; 0.21 measured)."""
    sb2 = 1 / 192
    out = T.predict_mlp(_config(init={"scheme": "xavier_normal"}, width=64, depth=15,
                                bias_init={"scheme": "normal", "std": math.sqrt(sb2)}))
    qs, tanh = [1.0 + sb2], np.tanh
    for _ in range(14):  # the length map, by quadrature
        qs.append(_expect(lambda x: tanh(x) ** 2, qs[-1]) + sb2)
    chis = [_expect(lambda x: 1 / np.cosh(x) ** 4, q) for q in qs[:-1]]
    transient = math.sqrt(math.prod(chis))
    assert transient == pytest.approx(0.197, abs=0.005)
    [note] = out["notes"]
    assert f"own χ(q_l) predict ‖∂L/∂z‖ first/last {transient:.2g}, χ₁ at q* = 0.0547 " \
           "predicts 0.51" in note
    assert f"q goes from {qs[0]:.3g} at the first layer to {qs[-1]:.3g} at the last" in note
    # also where q* is a limit (0 here), which is where a net's transient matters most
    zero = T.predict_mlp(_config(init={"scheme": "normal", "std": 0.1}, width=100, depth=10,
                                 bias_init={"scheme": "zeros"}))
    assert zero["q_star"] == 0.0 and any("own χ(q_l) predict" in n for n in zero["notes"])
    # where the layers sit near q* (deep_tanh: 3.1e-4 against 4.1e-4), no such note
    assert T.predict_mlp(_config(init={"scheme": "default"}, width=64, depth=15))["notes"] == []


@pytest.mark.parametrize("sigma_w2", [1.01, 1.1])
def test_fixed_point_near_the_edge_of_stability(sigma_w2: float) -> None:
    """tanh, σb² = 0, σw² just above 1: plain iteration crawls (rate ≈ 1 − 2(σw² − 1))."""
    q = T.fixed_point_q("tanh", sigma_w2, 0.0)
    ref = optimize.brentq(lambda x: T.length_map(x, "tanh", sigma_w2, 0.0) - x, 1e-6, 1.0, xtol=1e-15)
    assert q == pytest.approx(ref, rel=1e-9)


def test_selu_at_lecun_init_is_slightly_chaotic() -> None:
    # E[selu(z)²] = 1 fixes q* = 1 at σw² = 1, but E[selu'(z)²] = λ²(½ + α² e² Φ(−2)) ≈ 1.07.
    assert T.fixed_point_q("selu", 1.0, 0.0) == pytest.approx(1.0, rel=1e-6)
    expected = T.SELU_SCALE**2 * (0.5 + T.SELU_ALPHA**2 * math.e**2 * 0.5 * math.erfc(2 / math.sqrt(2)))
    assert T.chi1("selu", 1.0, 0.0) == pytest.approx(expected, rel=1e-9)


def test_activations_match_torch() -> None:
    x = np.linspace(-6, 6, 241)
    xt = torch.tensor(x, requires_grad=True)
    fns = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.1),
           "prelu": lambda t: torch.nn.functional.prelu(t, torch.tensor([0.3], dtype=t.dtype)),
           "elu": lambda t: torch.nn.functional.elu(t, 0.7), "selu": torch.selu,
           "gelu": torch.nn.functional.gelu, "identity": lambda t: t}
    for name, fn in fns.items():
        a = T.Activation(name, negative_slope=0.1, prelu_init=0.3, elu_alpha=0.7)
        (grad,) = torch.autograd.grad(fn(xt).sum(), xt)
        np.testing.assert_allclose(a.phi(x), fn(xt).detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.dphi(x), grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


# --- the correlation map ---------------------------------------------------------------------

@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.5, 0.9, 0.999])
def test_relu_correlation_map_is_the_arccos_kernel(c: float) -> None:
    expected = (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / math.pi  # Cho & Saul (2009)
    assert T.correlation_map(c, "relu", 2.0, 0.0) == pytest.approx(expected, rel=1e-10)


def test_correlation_map_slope_at_one_is_chi1() -> None:
    for name, sw2, sb2 in [("tanh", 2.5, 0.05), ("tanh", 1.0, 0.05), ("elu", 1.5, 0.1)]:
        eps = 1e-5
        assert T.correlation_map(1.0, name, sw2, sb2) == pytest.approx(1.0, abs=1e-12)
        slope = (1 - T.correlation_map(1 - eps, name, sw2, sb2)) / eps
        assert slope == pytest.approx(T.chi1(name, sw2, sb2), rel=1e-3)


# --- depth scale, phase, predicted norms -----------------------------------------------------

def test_depth_scale_phase_and_norms() -> None:
    assert T.depth_scale(math.exp(-0.1)) == pytest.approx(10.0)
    assert T.depth_scale(math.exp(0.1)) == pytest.approx(10.0)
    assert [T.phase(c) for c in (0.97, 0.99, 1.0, 1.01, 1.03)] == [
        "ordered", "critical", "critical", "critical", "chaotic"]
    assert T.predicted_layer_norms(0.25, 4) == pytest.approx([0.125, 0.25, 0.5, 1.0])
    assert T.predicted_grad_ratio(0.25, 4) == pytest.approx(0.25**1.5)  # L − 1 = 3 transitions
    assert T.predicted_layer_norms(0.3, 1) == [1.0]
    assert T.predicted_grad_ratio(1e6, 2000) == math.inf


# --- config → σw², σb² -----------------------------------------------------------------------

def test_default_init_matches_pytorch_linear() -> None:
    out = T.predict_mlp(_config(width=100))
    assert out["sigma_w2"] == pytest.approx(1 / 3) and out["sigma_b2"] == pytest.approx(1 / 300)
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256)
    assert layer.weight.var().item() * 256 == pytest.approx(1 / 3, rel=0.03)
    assert out["predictable"] and out["phase"] == "ordered"


@pytest.mark.parametrize("init,activation,sigma_w2", [
    ({"scheme": "xavier_normal"}, "tanh", 1.0),
    ({"scheme": "xavier_uniform", "gain": 2.0}, "relu", 4.0),
    ({"scheme": "xavier_normal", "nonlinearity": "tanh"}, "relu", 25 / 9),
    ({"scheme": "kaiming_normal"}, "relu", 2.0),
    ({"scheme": "kaiming_normal", "gain": 3.0}, "relu", 18.0),  # kaiming multiplies init.gain
    ({"scheme": "kaiming_uniform"}, "tanh", 25 / 9),
    ({"scheme": "kaiming_normal"}, "selu", 1.0),  # the linear gain, as PyTorch's docs advise
    ({"scheme": "kaiming_normal"}, "gelu", 1.5335304411955353 ** 2),  # 1/E[gelu(z)²]
    ({"scheme": "kaiming_normal", "nonlinearity": "linear"}, "relu", 1.0),
    ({"scheme": "normal", "std": 0.05}, "tanh", 0.25),
    ({"scheme": "uniform", "low": -0.1, "high": 0.1}, "tanh", 0.04 / 12 * 100),
    ({"scheme": "orthogonal", "gain": 1.5}, "tanh", 2.25),
    ("kaiming_normal", "relu", 2.0),
])
def test_implied_sigma_w2(init: Any, activation: str, sigma_w2: float) -> None:
    out = T.predict_mlp(_config(init=init, activation=activation, width=100))
    assert out["sigma_w2"] == pytest.approx(sigma_w2)


def test_kaiming_slopes_and_gains_match_torch() -> None:
    out = T.predict_mlp(_config(init="kaiming_normal", activation="leaky_relu", negative_slope=0.2))
    assert out["sigma_w2"] == pytest.approx(2 / 1.04)
    out = T.predict_mlp(_config(init="kaiming_normal", activation="prelu", prelu_init=0.25))
    assert out["sigma_w2"] == pytest.approx(2 / 1.0625)
    for name in ("linear", "sigmoid", "tanh", "relu", "selu"):
        assert T.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    for slope in (None, 0.0, 0.2):
        assert T.calculate_gain("leaky_relu", slope) == pytest.approx(
            torch.nn.init.calculate_gain("leaky_relu", slope))


def test_implied_sigma_b2() -> None:
    assert T.predict_mlp(_config(bias_init="zeros"))["sigma_b2"] == 0.0
    out = T.predict_mlp(_config(bias_init={"scheme": "constant", "value": 0.1}))
    assert out["sigma_b2"] == pytest.approx(0.01) and out["predictable"]
    assert any("constant" in n for n in out["notes"])


def test_he_relu_prediction() -> None:
    out = T.predict_mlp(_config(activation="relu", init="kaiming_normal", bias_init="zeros", depth=50))
    assert out["predictable"] and out["phase"] == "critical"
    assert out["chi1"] == pytest.approx(1.0) and out["predicted_grad_ratio"] == pytest.approx(1.0)
    assert out["depth_scale"] is None and out["critical_sigma_w2"] == pytest.approx(2.0)


@pytest.mark.parametrize("changes,fragment", [
    ({"norm": "batch"}, "model.norm batch"),
    ({"norm": "layer"}, "model.norm layer"),
    ({"residual": True}, "residual"),
    ({"init": {"scheme": "constant", "value": 0.1}}, "constant init: units are symmetric"),
    ({"init": "zeros"}, "zeros init"),
    ({"init": "identity"}, "random weights"),
    ({"init": {"scheme": "normal", "mean": 0.1, "std": 0.1}}, "mean"),
    ({"kind": "rnn"}, "kind rnn: not an MLP"),
])
def test_not_predictable(changes: dict[str, Any], fragment: str) -> None:
    out = T.predict_mlp(_config(**changes))
    assert not out["predictable"]
    assert any(fragment in r for r in out["reasons"]), out["reasons"]
    assert out["chi1"] is None and out["phase"] is None and out["predicted_grad_ratio"] is None
    json.dumps(out, allow_nan=False)


def test_not_predictable_keeps_what_it_can() -> None:
    out = T.predict_mlp(_config(norm="batch", init="kaiming_normal", activation="relu"))
    assert out["sigma_w2"] == pytest.approx(2.0) and out["critical_sigma_w2"] == pytest.approx(2.0)


def test_output_is_json_safe_when_exploding() -> None:
    out = T.predict_mlp(_config(activation="relu", init={"scheme": "normal", "std": 1.0}, depth=2000))
    assert out["phase"] == "chaotic" and out["q_star"] is None  # q* = ∞
    assert out["predicted_grad_ratio"] is None  # 50^999.5 overflows
    json.dumps(out, allow_nan=False)


# --- measurement: a wide random tanh net at init ---------------------------------------------

@pytest.mark.parametrize("activation,sigma_w2,sigma_b2", [
    ("tanh", 1.0, 0.05),  # ordered: χ₁ ≈ 0.759
    ("tanh", 2.5, 0.05),  # chaotic: χ₁ ≈ 1.134
    ("sigmoid", 4.0, 0.0),  # deeply ordered: χ₁ ≈ 0.172
])
def test_measured_gradient_decay_matches_chi1(activation: str, sigma_w2: float, sigma_b2: float) -> None:
    """ln‖∂L/∂z_l‖ falls by ln √χ₁ per layer towards the input in a width-512 float64 net."""
    width, depth, batch, dtype = 512, 20, 64, torch.float64
    g = torch.Generator().manual_seed(0)
    act = torch.tanh if activation == "tanh" else torch.sigmoid
    h = torch.randn(batch, width, generator=g, dtype=dtype, requires_grad=True)
    zs = []
    for _ in range(depth):
        W = torch.randn(width, width, generator=g, dtype=dtype) * math.sqrt(sigma_w2 / width)
        b = torch.randn(width, generator=g, dtype=dtype) * math.sqrt(sigma_b2)
        z = h @ W.T + b
        z.retain_grad()
        zs.append(z)
        h = act(z)
    head = torch.randn(8, width, generator=g, dtype=dtype) / math.sqrt(width)
    target = torch.randn(batch, 8, generator=g, dtype=dtype)
    ((h @ head.T - target) ** 2).mean().backward()
    log_norms = np.log([z.grad.norm().item() for z in zs])
    layers = np.arange(1, depth + 1)
    start = 5  # q_l settles to q* within a few layers; fit layers 5..20
    measured = -np.polyfit(layers[start - 1:], log_norms[start - 1:], 1)[0]  # ln(‖δ_l‖/‖δ_{l+1}‖)
    predicted = 0.5 * math.log(T.chi1(activation, sigma_w2, sigma_b2))
    assert measured == pytest.approx(predicted, rel=0.15)
