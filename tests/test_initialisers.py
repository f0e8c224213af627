"""Every initialiser in `INITIALISERS` against the std (or exact values) its scheme states,
measured on large seeded matrices; and `init_bias` for each bias scheme.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from gradlab.build.initialisers import INITIALISERS, init_bias, init_weight
from gradlab.build.model import build_model
from gradlab.config import BiasInitConfig, InitConfig, ModelConfig

OUT, IN = 200, 800  # nn.Linear's layout (out, in): fan_in 800, fan_out 200
GLOROT = math.sqrt(2 / (IN + OUT))


def filled(cfg: InitConfig, activation: str = "relu", slope: float = 0.01,
           shape: tuple[int, int] = (OUT, IN)) -> torch.Tensor:
    torch.manual_seed(0)
    W = torch.full(shape, float("nan"))
    init_weight(W, cfg, activation, slope)
    return W


# (id, InitConfig settings, activation, slope, expected std); the gains are written out by hand:
# relu √2, leaky_relu √(2 / (1 + slope²)), tanh 5/3, sigmoid 1, selu 3/4, linear 1.
STD_CASES: list[tuple[str, dict[str, Any], str, float, float]] = [
    ("xavier_normal", {"scheme": "xavier_normal"}, "tanh", 0.01, GLOROT),
    ("xavier_normal_relu_act_still_gain_1", {"scheme": "xavier_normal"}, "relu", 0.01, GLOROT),
    ("xavier_normal_gain", {"scheme": "xavier_normal", "gain": 2.0}, "tanh", 0.01, 2 * GLOROT),
    ("xavier_normal_nl_tanh", {"scheme": "xavier_normal", "nonlinearity": "tanh"}, "relu", 0.01,
     5 / 3 * GLOROT),
    ("xavier_normal_nl_relu", {"scheme": "xavier_normal", "nonlinearity": "relu"}, "tanh", 0.01,
     math.sqrt(2) * GLOROT),
    ("xavier_uniform", {"scheme": "xavier_uniform"}, "sigmoid", 0.01, GLOROT),
    ("xavier_uniform_nl_sigmoid_gain", {"scheme": "xavier_uniform", "nonlinearity": "sigmoid",
                                        "gain": 0.5}, "relu", 0.01, 0.5 * GLOROT),
    ("kaiming_normal_relu", {"scheme": "kaiming_normal"}, "relu", 0.0, math.sqrt(2 / IN)),
    ("kaiming_normal_relu_fan_out", {"scheme": "kaiming_normal", "mode": "fan_out"}, "relu", 0.0,
     math.sqrt(2 / OUT)),
    ("kaiming_normal_leaky", {"scheme": "kaiming_normal"}, "leaky_relu", 0.2,
     math.sqrt(2 / 1.04) / math.sqrt(IN)),
    ("kaiming_normal_leaky_fan_out", {"scheme": "kaiming_normal", "mode": "fan_out"},
     "leaky_relu", 0.5, math.sqrt(2 / 1.25) / math.sqrt(OUT)),
    ("kaiming_normal_prelu", {"scheme": "kaiming_normal"}, "prelu", 0.25,
     math.sqrt(2 / 1.0625) / math.sqrt(IN)),
    ("kaiming_normal_tanh", {"scheme": "kaiming_normal"}, "tanh", 0.0, 5 / 3 / math.sqrt(IN)),
    ("kaiming_normal_tanh_fan_out", {"scheme": "kaiming_normal", "mode": "fan_out"}, "tanh", 0.0,
     5 / 3 / math.sqrt(OUT)),
    ("kaiming_normal_sigmoid", {"scheme": "kaiming_normal"}, "sigmoid", 0.0, 1 / math.sqrt(IN)),
    # SELU takes the linear gain, as PyTorch's docs advise for self-normalising nets
    ("kaiming_normal_selu", {"scheme": "kaiming_normal"}, "selu", 0.0, 1.0 / math.sqrt(IN)),
    ("kaiming_normal_identity", {"scheme": "kaiming_normal"}, "identity", 0.0, 1 / math.sqrt(IN)),
    ("kaiming_normal_elu_as_relu", {"scheme": "kaiming_normal"}, "elu", 0.0, math.sqrt(2 / IN)),
    # GELU: 1/√E[gelu(z)²] = 1.5335 (E[gelu(z)²] = 0.42522 by numerical integration)
    ("kaiming_normal_gelu", {"scheme": "kaiming_normal"}, "gelu", 0.0, 1.5335 / math.sqrt(IN)),
    ("kaiming_normal_gain", {"scheme": "kaiming_normal", "gain": 0.5}, "relu", 0.0,
     0.5 * math.sqrt(2 / IN)),
    ("kaiming_normal_nl_linear_overrides", {"scheme": "kaiming_normal", "nonlinearity": "linear"},
     "relu", 0.0, 1 / math.sqrt(IN)),
    ("kaiming_normal_nl_tanh_overrides", {"scheme": "kaiming_normal", "nonlinearity": "tanh"},
     "relu", 0.0, 5 / 3 / math.sqrt(IN)),
    ("kaiming_uniform_relu", {"scheme": "kaiming_uniform"}, "relu", 0.0, math.sqrt(2 / IN)),
    ("kaiming_uniform_tanh_fan_out", {"scheme": "kaiming_uniform", "mode": "fan_out"}, "tanh",
     0.0, 5 / 3 / math.sqrt(OUT)),
    ("normal", {"scheme": "normal", "std": 0.3}, "relu", 0.0, 0.3),
    ("uniform", {"scheme": "uniform", "low": -0.2, "high": 0.6}, "relu", 0.0, 0.8 / math.sqrt(12)),
]


@pytest.mark.parametrize(("settings", "activation", "slope", "std"),
                         [c[1:] for c in STD_CASES], ids=[c[0] for c in STD_CASES])
def test_empirical_std_matches_the_scheme(settings: dict[str, object], activation: str,
                                          slope: float, std: float) -> None:
    W = filled(InitConfig(**settings), activation, slope)  # type: ignore[arg-type]
    assert bool(W.isfinite().all())  # every entry was written
    assert float(W.std()) == pytest.approx(std, rel=0.02)


@pytest.mark.parametrize("scheme", ["xavier_uniform", "kaiming_uniform"])
def test_uniform_schemes_stay_within_their_bound(scheme: str) -> None:
    # bound = √3 · std: xavier √(6 / (fan_in + fan_out)), kaiming (relu) √2 · √(3 / fan_in)
    bound = {"xavier_uniform": math.sqrt(6 / (IN + OUT)),
             "kaiming_uniform": math.sqrt(2) * math.sqrt(3 / IN)}[scheme]
    W = filled(InitConfig(scheme=scheme), "relu", 0.0)  # type: ignore[arg-type]
    assert float(W.abs().max()) <= bound
    assert float(W.abs().max()) > 0.98 * bound


def test_normal_has_its_mean() -> None:
    W = filled(InitConfig(scheme="normal", mean=0.5, std=0.3))
    assert float(W.mean()) == pytest.approx(0.5, abs=0.01)


def test_uniform_has_its_range() -> None:
    W = filled(InitConfig(scheme="uniform", low=-0.2, high=0.6))
    assert -0.2 <= float(W.min()) < -0.19 and 0.59 < float(W.max()) <= 0.6
    assert float(W.mean()) == pytest.approx(0.2, abs=0.01)


def test_constant_and_zeros_fill_every_entry() -> None:
    assert bool((filled(InitConfig(scheme="constant", value=0.7)) == 0.7).all())
    assert bool((filled(InitConfig(scheme="zeros")) == 0).all())


@pytest.mark.parametrize("shape", [(400, 400), (OUT, IN)], ids=["square", "wide"])
def test_orthogonal_is_orthogonal_times_gain(shape: tuple[int, int]) -> None:
    W = filled(InitConfig(scheme="orthogonal", gain=1.5), shape=shape).double()
    rows = min(shape)  # a wide matrix has orthogonal rows: W Wᵀ = gain² I
    gram = W.T @ W if shape[0] >= shape[1] else W @ W.T
    assert torch.allclose(gram, 2.25 * torch.eye(rows, dtype=torch.float64), atol=1e-4)


@pytest.mark.parametrize("shape", [(400, 400), (OUT, IN)], ids=["square", "wide"])
def test_identity_is_the_eye(shape: tuple[int, int]) -> None:
    W = filled(InitConfig(scheme="identity"), shape=shape)
    expected = torch.zeros(shape)
    for i in range(min(shape)):
        expected[i, i] = 1.0
    assert torch.equal(W, expected)


def test_default_leaves_the_weight_untouched() -> None:
    torch.manual_seed(0)
    W = torch.randn(OUT, IN)
    before = W.clone()
    init_weight(W, InitConfig(), "relu")
    assert torch.equal(W, before)


def test_default_in_a_model_is_pytorchs_linear_init() -> None:
    # nn.Linear: U(−1/√fan_in, 1/√fan_in), whose std is 1/√(3 fan_in)
    torch.manual_seed(0)
    built = build_model(ModelConfig(depth=2, width=400, activation="relu"), 300, 5)
    for layer, fan_in in zip(built.layers[:2], (300, 400)):
        W = layer.weight.detach()
        bound = 1 / math.sqrt(fan_in)
        assert float(W.abs().max()) <= bound and float(W.abs().max()) > 0.99 * bound
        assert float(W.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_every_initialiser_is_tested() -> None:
    tested = {c[1]["scheme"] for c in STD_CASES} | {
        "constant", "zeros", "orthogonal", "identity", "default"}
    assert tested == set(INITIALISERS)


def test_init_bias_schemes() -> None:
    torch.manual_seed(0)
    b = torch.randn(50)
    before = b.clone()
    init_bias(b, BiasInitConfig())
    assert torch.equal(b, before)
    init_bias(b, BiasInitConfig(scheme="constant", value=0.3))
    assert torch.equal(b, torch.full((50,), 0.3))
    init_bias(b, BiasInitConfig(scheme="zeros"))
    assert torch.equal(b, torch.zeros(50))
    torch.manual_seed(0)
    big = torch.empty(20_000)
    init_bias(big, BiasInitConfig(scheme="normal", mean=0.1, std=0.2))
    assert big.mean().item() == pytest.approx(0.1, abs=0.01)
    assert big.std().item() == pytest.approx(0.2, rel=0.02)
    with pytest.raises(ValueError, match="value: not used by scheme zeros"):
        BiasInitConfig(scheme="zeros", value=0.3)  # a key the scheme ignores is an error
    init_bias(None, BiasInitConfig(scheme="zeros"))  # a layer without a bias is left alone


def test_bias_init_reaches_every_layer_of_a_model() -> None:
    cfg = ModelConfig(depth=3, width=8, bias_init=BiasInitConfig(scheme="constant", value=-0.4))
    net: Any = build_model(cfg, 4, 2).model
    biases = [lin.bias for lin in [*net.linears, net.head]]
    assert all(torch.equal(b.detach(), torch.full_like(b, -0.4)) for b in biases)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu",
                                        "selu", "gelu", "identity"])
def test_the_theory_implies_the_variance_the_initialiser_draws(activation: str) -> None:
    """analyse.theory computes σw² from a config without torch; it must match what
    build.initialisers actually draws, activation by activation."""
    from gradlab.analyse import theory
    from gradlab.build.initialisers import gain
    from gradlab.config.schema import GAIN_NAME

    param = {"leaky_relu": 0.01, "prelu": 0.25, "elu": 1.0}.get(activation, 0.0)
    name = GAIN_NAME[activation]
    assert theory.calculate_gain(name, param) == pytest.approx(gain(name, param), rel=1e-6)
    torch.manual_seed(0)
    W = torch.empty(400, 400)
    init_weight(W, InitConfig(scheme="kaiming_normal"), activation, param)
    model = {"kind": "mlp", "depth": 3, "width": 400, "activation": activation,
             "negative_slope": 0.01, "prelu_init": 0.25, "elu_alpha": 1.0,
             "init": {"scheme": "kaiming_normal"}}
    sigma_w2, _, _, _ = theory.implied_variances(model)
    assert W.var().item() * 400 == pytest.approx(sigma_w2, rel=0.02)
