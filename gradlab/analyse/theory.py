"""Mean-field signal propagation in deep fully connected nets at initialisation.

Poole et al. (2016) and Schoenholz et al. (2017): the length map q ↦ σw² E[φ(√q z)²] + σb², its
fixed point q*, χ₁ = σw² E[φ'(√q* z)²] (the per-layer factor of the squared backward gradient),
the phase, the critical σw², and `predict_mlp`, which reads a gradlab config dict. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradlab.config.schema import GAIN_NAME

Array = np.ndarray
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "gelu", "identity")
# Activations with φ(αx) = αφ(x) for α > 0: χ₁ and E[φ²]/q do not depend on q.
HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "identity")
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
PHASE_TOL = 0.02  # |χ₁ − 1| ≤ PHASE_TOL is 'critical': over 50 layers ‖δ‖ changes by ≤ e^{±0.5}
Q_ZERO, Q_INF = 1e-30, 1e30  # the length-map iteration snaps to q* = 0 or q* = ∞ beyond these
CROSSING = 1e-9  # a relative step of the length map taken as a real change of sign (`_limit`)

_erfc = np.frompyfunc(math.erfc, 1, 1)


@dataclass(frozen=True)
class Activation:
    """An activation by gradlab's name with its parameters; `phi` and `dphi` are vectorised."""

    name: str
    negative_slope: float = 0.01
    prelu_init: float = 0.25
    elu_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.name!r}; expected one of {ACTIVATIONS}")

    @property
    def slope(self) -> float:
        """The negative-side slope of leaky_relu/prelu (PReLU's learnt slope at init), else 0."""
        return {"leaky_relu": self.negative_slope, "prelu": self.prelu_init}.get(self.name, 0.0)

    @property
    def _elu_constants(self) -> tuple[float, float]:
        return (self.elu_alpha, 1.0) if self.name == "elu" else (SELU_ALPHA, SELU_SCALE)

    def phi(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        n, neg = self.name, np.minimum(x, 0.0)
        if n == "sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * x))
        if n == "tanh":
            return np.tanh(x)
        if n in ("relu", "leaky_relu", "prelu"):
            return np.where(x > 0, x, self.slope * x)
        if n in ("elu", "selu"):
            alpha, scale = self._elu_constants
            return scale * np.where(x > 0, x, alpha * np.expm1(neg))
        if n == "gelu":
            return x * _normal_cdf(x)
        return x.copy()

    def dphi(self, x: Array) -> Array:
        x = np.asarray(x, dtype=float)
        n, neg = self.name, np.minimum(x, 0.0)
        if n == "sigmoid":
            return 0.25 * (1.0 - np.tanh(0.5 * x) ** 2)
        if n == "tanh":
            return 1.0 - np.tanh(x) ** 2
        if n in ("relu", "leaky_relu", "prelu"):
            return np.where(x > 0, 1.0, self.slope)
        if n in ("elu", "selu"):
            alpha, scale = self._elu_constants
            return scale * np.where(x > 0, 1.0, alpha * np.exp(neg))
        if n == "gelu":
            return _normal_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        return np.ones_like(x)


def _normal_cdf(x: Array) -> Array:
    return 0.5 * np.asarray(_erfc(-x / math.sqrt(2.0)), dtype=float)


def _act(act: Activation | str) -> Activation:
    return act if isinstance(act, Activation) else Activation(act)


def _half_line_rule(per_panel: int = 16) -> tuple[Array, Array]:
    """Nodes and weights for ∫_0^∞ g(r) dr: Gauss–Legendre on panels graded towards 0, cut at 12.5.

    Every activation here is smooth except at 0, so splitting the Gaussian integral at 0 makes it
    spectrally accurate for the ReLU family's kinks. Gauss–Hermite is not: with 100 nodes it is
    off by 0.5–3 % for ELU's E[φ'²] (q = 1–100) and by 2 % (q = 10) to 90 % (q = 100) for tanh's
    E[φ'²], whose mass sits within 1/√q of 0. The graded panels resolve that up to q ≈ 1e6.
    """
    edges = [0.0, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.7, 1.5, 3.0, 5.0, 8.0, 12.5]
    x, w = np.polynomial.legendre.leggauss(per_panel)
    nodes = [(a + b) / 2 + (b - a) / 2 * x for a, b in zip(edges[:-1], edges[1:])]
    weights = [(b - a) / 2 * w for a, b in zip(edges[:-1], edges[1:])]
    return np.concatenate(nodes), np.concatenate(weights)


_R, _RW = _half_line_rule()
_Z = np.concatenate([-_R[::-1], _R])  # a full-line rule for E[f(z)], z ~ N(0, 1)
_ZW = np.concatenate([_RW[::-1], _RW]) * np.exp(-0.5 * _Z**2) / math.sqrt(2 * math.pi)
_RADIAL_W = _RW * _R * np.exp(-0.5 * _R**2)  # ∫_0^∞ g(r) r e^{-r²/2} dr, for the 2-D rule
_ARC_X, _ARC_W = np.polynomial.legendre.leggauss(24)


def gaussian_expectation(f: Callable[[Array], Array], q: float) -> float:
    """E[f(√q z)] for z ~ N(0, 1); q is clamped to [1e-300, 1e300], so q = 0 gives the q → 0⁺
    limit (one-sided values at a kink) and q = ∞ the q → ∞ limit."""
    s = math.sqrt(min(max(q, 1e-300), 1e300))
    return float(np.dot(_ZW, f(s * _Z)))


def length_map(q: float, act: Activation | str, sigma_w2: float, sigma_b2: float) -> float:
    """q_{l+1} = σw² E[φ(√q_l z)²] + σb²: the mean squared pre-activation of the next layer."""
    a = _act(act)
    return sigma_w2 * gaussian_expectation(lambda x: a.phi(x) ** 2, q) + sigma_b2


def fixed_point_q(act: Activation | str, sigma_w2: float, sigma_b2: float, *, q0: float = 1.0,
                  max_iter: int = 1000, rtol: float = 1e-12) -> float:
    """q* reached by iterating the length map from q0 (unit-variance inputs reach q¹ ≈ σw² + σb²).

    Returns 0.0 when σb² = 0 and q falls below Q_ZERO (e.g. tanh with σw² < 1), math.inf when q
    exceeds Q_INF (e.g. ReLU with σw² > 2). Aitken jumps keep slow cases fast (tanh, σb² = 0,
    σw² ≈ 1); a jump past a fixed point falls back to bisection between it and the iterate. If
    max_iter rounds do not converge (ELU at σw² = 2, where q grows by about 1 a layer; tanh at
    σw² = 1, σb² = 0, where it falls like 1/l), the limit is found where the iterates head
    (`_limit`): the first fixed point in that direction, or ∞ or 0 where there is none.
    Homogeneous activations (ReLU family, identity) use the closed form q* = σb² / (1 − σw² k).
    """
    a = _act(act)
    if a.name in HOMOGENEOUS:
        k = sigma_w2 * gaussian_expectation(lambda x: a.phi(x) ** 2, 1.0)
        if abs(k - 1.0) < 1e-12:
            return float(q0) if sigma_b2 == 0 else math.inf
        return sigma_b2 / (1.0 - k) if k < 1 else (0.0 if sigma_b2 == q0 == 0 else math.inf)
    q = q0
    for _ in range(max_iter):  # each round: two map steps, then a safeguarded Aitken jump
        q1 = length_map(q, a, sigma_w2, sigma_b2)
        q2 = length_map(q1, a, sigma_w2, sigma_b2)
        for prev, new in ((q, q1), (q1, q2)):
            if not new <= Q_INF:
                return math.inf
            if sigma_b2 == 0 and new < Q_ZERO:
                return 0.0
            if abs(new - prev) <= rtol * new:
                return new
        d, curve = math.copysign(1.0, q1 - q), q2 - 2 * q1 + q
        p = max(q2 - (q2 - q1) ** 2 / curve, Q_ZERO / 10) if curve != 0 else q2
        if (p - q2) * d > 0:  # the map is increasing, so its iterates are monotone
            if (length_map(p, a, sigma_w2, sigma_b2) - p) * d < 0:  # jumped past a fixed point
                before = lambda m: (length_map(m, a, sigma_w2, sigma_b2) - m) * d > 0  # noqa: B023
                return _bisect(before, q2, p, rtol)
            q2 = p
        q = q2
    return _limit(lambda m: length_map(m, a, sigma_w2, sigma_b2), q, rtol)


def _limit(f: Callable[[float], float], q: float, rtol: float, ratio: float = 1.25) -> float:
    """Where the iterates of an increasing map f go from q: the nearest fixed point in the
    direction f(q) − q points (a sign change of f(m) − m on a geometric ladder of points, then
    bisection), else Q_INF's side (∞) or Q_ZERO's (0). A sign change counts only beyond
    rounding (|f(m) − m| > CROSSING · m): where q grows by 1 a layer, f(1e16) = 1e16 in floats."""
    up = f(q) > q
    lo = q
    while True:
        hi = lo * ratio if up else lo / ratio
        if (up and hi > Q_INF) or (not up and hi < Q_ZERO):
            return math.inf if up else 0.0
        step = f(hi) - hi
        if (step < -CROSSING * hi) if up else (step > CROSSING * hi):  # f crossed the identity
            return _bisect(lambda m: (f(m) > m) == up, lo, hi, rtol)
        lo = hi


def _bisect(on_lo_side: Callable[[float], bool], lo: float, hi: float, rtol: float) -> float:
    """The point between lo (where on_lo_side holds) and hi (where it does not); lo > hi is fine."""
    while abs(hi - lo) > rtol * abs(hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if on_lo_side(mid) else (lo, mid)
    return 0.5 * (lo + hi)


def chi1(act: Activation | str, sigma_w2: float, sigma_b2: float, q_star: float | None = None) -> float:
    """χ₁ = σw² E[φ'(√q* z)²]: E‖δ_l‖² = χ₁ E‖δ_{l+1}‖² for the pre-activation gradients δ.

    At q* = 0 this is σw² φ'(0)² (for a kink, the mean of the one-sided squared slopes)."""
    a = _act(act)
    q = fixed_point_q(a, sigma_w2, sigma_b2) if q_star is None else q_star
    return sigma_w2 * gaussian_expectation(lambda x: a.dphi(x) ** 2, q)


def correlation_map(c: float, act: Activation | str, sigma_w2: float, sigma_b2: float,
                    q_star: float | None = None) -> float:
    """The next layer's correlation of two inputs with correlation c, both at length q*.

    A 2-D rule in polar coordinates: u₁ = √q r cos θ, u₂ = √q r cos(θ − arccos c), so φ's kinks
    lie on four fixed rays; Gauss–Legendre on each arc between them, the graded rule along r.
    Normalised by the length map at q*, so c = 1 maps to 1 and dc'/dc at c = 1 is χ₁."""
    a = _act(act)
    q = fixed_point_q(a, sigma_w2, sigma_b2) if q_star is None else q_star
    s = math.sqrt(min(max(q, 1e-300), 1e300))
    t0 = math.acos(min(max(c, -1.0), 1.0))
    cuts = sorted({0.0, 2 * math.pi} | {(t0 + k * math.pi / 2) % (2 * math.pi) for k in (1, 3)}
                  | {math.pi / 2, 3 * math.pi / 2})
    thetas = np.concatenate([(lo + hi) / 2 + (hi - lo) / 2 * _ARC_X for lo, hi in zip(cuts[:-1], cuts[1:])])
    tw = np.concatenate([(hi - lo) / 2 * _ARC_W for lo, hi in zip(cuts[:-1], cuts[1:])]) / (2 * math.pi)
    u1 = s * np.outer(_R, np.cos(thetas))
    u2 = s * np.outer(_R, np.cos(thetas - t0))
    cross = float(_RADIAL_W @ (a.phi(u1) * a.phi(u2)) @ tw)
    return (sigma_w2 * cross + sigma_b2) / length_map(q, a, sigma_w2, sigma_b2)


def depth_scale(chi: float) -> float:
    """ξ = 1/|ln χ₁| (−1/ln χ₁ when ordered): E‖δ_l‖² ∝ e^{−(L−l)/ξ} (ordered) or e^{+(L−l)/ξ}
    (chaotic); ∞ when |ln χ₁| < 1e-12 (χ₁ = 1 up to rounding), 0 at χ₁ = 0. The gradient norm
    itself changes by a factor e over 2ξ layers."""
    if chi <= 0:
        return 0.0
    log = abs(math.log(chi))
    return math.inf if log < 1e-12 else 1.0 / log


def phase(chi: float, tol: float = PHASE_TOL) -> str:
    """'ordered' (χ₁ < 1 − tol: vanishing), 'chaotic' (χ₁ > 1 + tol: exploding), else 'critical'.

    For the ReLU family 'chaotic' only means exploding: their correlations do not decorrelate."""
    return "ordered" if chi < 1 - tol else "chaotic" if chi > 1 + tol else "critical"


def critical_sigma_w2(act: Activation | str, sigma_b2: float, *, hi_max: float = 1e4,
                      tol: float = 1e-9) -> float | None:
    """The σw² with χ₁(σw², σb²) = 1: bisection on [0, the first power of 2 with χ₁ ≥ 1].

    None if χ₁ < 1 up to hi_max. Where χ₁ is not monotone in σw² (ELU near σb² = 0) or jumps
    (GELU at σb² = 0, where q* flips between 0 and ∞ for inputs at q = 1) it is one crossing."""
    a = _act(act)
    hi = 1.0
    while chi1(a, hi, sigma_b2) < 1.0:
        hi *= 2.0
        if hi > hi_max:
            return None
    return _bisect(lambda w: chi1(a, w, sigma_b2) < 1.0, 0.0, hi, tol)


def predicted_layer_norms(chi: float, depth: int) -> list[float]:
    """Relative ‖δ_l‖ for hidden layers l = 1..depth: χ₁^((depth − l)/2), the last layer 1.

    Smaller on the input side in the ordered phase; may hold 0.0 or inf when χ₁^… under/overflows."""
    with np.errstate(over="ignore"):
        return [float(v) for v in np.power(float(chi), 0.5 * np.arange(depth - 1, -1, -1))]


def predicted_grad_ratio(chi: float, depth: int) -> float:
    """‖δ_1‖ / ‖δ_L‖ over the hidden layers of a depth-L net: L − 1 transitions, χ₁^((L−1)/2).

    δ is the loss gradient at a hidden layer's pre-activation. gradlab's grad_ratio_init compares
    weight gradients of fc1 and the head instead, which also carry ‖x‖ and ‖h_L‖ factors."""
    return predicted_layer_norms(chi, depth)[0]


def calculate_gain(name: str, param: float | None = None) -> float:
    """The gain gradlab's init uses for a `config.schema.GAIN_NAME` name: torch.nn.init's
    calculate_gain (leaky_relu's slope defaults to 0.01), and for ELU (param: alpha) and GELU
    the variance-preserving 1/√E[φ(z)²], z ~ N(0, 1), as `build.initialisers.gain`."""
    if name == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope**2))
    if name in ("elu", "gelu"):
        act = Activation(name, elu_alpha=1.0 if param is None or name == "gelu" else float(param))
        return 1.0 / math.sqrt(gaussian_expectation(lambda z: act.phi(z) ** 2, 1.0))
    return {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0), "selu": 0.75}[name]


def _gain_param(act: str, model: Mapping[str, Any], slope: float) -> float:
    """The activation parameter its gain depends on: a negative slope, or ELU's alpha."""
    return float(model.get("elu_alpha", 1.0)) if act == "elu" else slope


def _section(value: Any) -> dict[str, Any]:
    """`init: xavier_normal` is shorthand for `init: {scheme: xavier_normal}`."""
    if isinstance(value, str):
        return {"scheme": value}
    return dict(value) if isinstance(value, Mapping) else {}


def implied_variances(model: Mapping[str, Any]) -> tuple[float | None, float | None, list[str], list[str]]:
    """(σw², σb², reasons, notes) of the square hidden layers (fan_in = fan_out = width).

    `reasons` say why the theory does not apply; `notes` are caveats that do not stop it."""
    width, act = int(model.get("width", 100)), str(model.get("activation", "relu"))
    init, bias = _section(model.get("init", "default")), _section(model.get("bias_init", "default"))
    scheme, reasons, notes = str(init.get("scheme", "default")), [], []
    slope = {"leaky_relu": float(model.get("negative_slope", 0.01)),
             "prelu": float(model.get("prelu_init", 0.25))}.get(act, 0.0)
    gain, mean = float(init.get("gain", 1.0)), float(init.get("mean", 0.0))
    nonlinearity = init.get("nonlinearity")
    sw2: float | None
    if scheme == "default":  # nn.Linear: kaiming_uniform_(a=√5) = U(±1/√fan_in)
        sw2 = 1.0 / 3.0
    elif scheme == "normal":
        sw2 = float(init.get("std", 0.01)) ** 2 * width
    elif scheme == "uniform":
        low, high = float(init.get("low", -0.05)), float(init.get("high", 0.05))
        sw2, mean = (high - low) ** 2 / 12.0 * width, (low + high) / 2
    elif scheme.startswith("xavier"):  # gradlab: plain Glorot (gain 1) unless nonlinearity is set
        sw2 = (gain * (calculate_gain(str(nonlinearity), slope) if nonlinearity else 1.0)) ** 2
    elif scheme.startswith("kaiming"):  # the activation's gain times init.gain
        sw2 = (gain * calculate_gain(str(nonlinearity or GAIN_NAME.get(act, "linear")),
                                     _gain_param(act, model, slope))) ** 2
    elif scheme == "orthogonal":
        sw2 = gain**2
        notes.append("orthogonal weights: q* and χ₁ as for Gaussian ones; the Jacobian's spectrum "
                     "is better conditioned (Pennington et al. 2017)")
    elif scheme == "identity":
        sw2 = 1.0
        reasons.append("init identity is deterministic: the theory assumes random weights")
    elif scheme in ("zeros", "constant"):
        sw2 = None
        reasons.append(f"{scheme} init: units are symmetric (every unit computes the same function)")
    else:
        sw2 = None
        reasons.append(f"init scheme {scheme!r} is unknown to the theory")
    if scheme in ("normal", "uniform") and mean != 0:
        reasons.append(f"init {scheme} mean {mean} ≠ 0: a weight component shared by all units is "
                       "outside the zero-mean theory")
    bias_scheme, value = str(bias.get("scheme", "default")), float(bias.get("value", 0.0))
    if bias_scheme == "default":  # nn.Linear: U(±1/√fan_in)
        sb2: float | None = 1.0 / (3.0 * width)
    elif bias_scheme == "constant" and value != 0:
        sb2 = value**2
        notes.append(f"bias constant {value}: modelled as σb² = value² (right to second order for "
                     "odd activations; the ReLU family's shifted active fraction is not modelled)")
    elif bias_scheme in ("zeros", "constant"):
        sb2 = 0.0
    elif bias_scheme == "normal":  # N(mean, std²): the σb² of mean-field theory itself
        std, bias_mean = float(bias.get("std", 0.05)), float(bias.get("mean", 0.0))
        sb2 = std**2 + bias_mean**2
        if bias_mean:
            notes.append(f"bias mean {bias_mean}: modelled as σb² = std² + mean²")
    else:
        sb2 = None
        reasons.append(f"bias_init scheme {bias_scheme!r} is unknown to the theory")
    return sw2, sb2, reasons, notes


def _unsettled(act: Activation, sigma_w2: float, sigma_b2: float, q_star: float, depth: int,
               ratio: float, factor: float = 2.0) -> str | None:
    """A note where the fixed point does not describe the net's layers: from
    unit-variance inputs (q₁ = σw² + σb²) the length map gives each hidden layer its own q_l,
    and χ(q_l) = σw² E[φ'(√q_l z)²] layer by layer predicts a first/last ‖∂L/∂z‖ more than
    `factor` away from χ₁'s `ratio` (init_xavier_tanh: q falls from 1 to 0.06 over its 15
    layers, q* 0.055; 0.2 against 0.51, and 0.21 measured)."""
    qs = [sigma_w2 + sigma_b2]
    for _ in range(depth - 1):
        qs.append(min(length_map(qs[-1], act, sigma_w2, sigma_b2), Q_INF))
    chis = [chi1(act, sigma_w2, sigma_b2, q) for q in qs[:-1]]  # χ at each layer's own q
    if not (chis and all(c > 0 for c in chis) and 0 < ratio < math.inf):
        return None
    log_transient = 0.5 * sum(math.log(c) for c in chis)  # in logs: no overflow at any depth
    if abs(log_transient - math.log(ratio)) <= math.log(factor):
        return None
    transient = math.exp(min(log_transient, 700.0))
    return (f"the layers' own χ(q_l) predict ‖∂L/∂z‖ first/last {transient:.2g}, χ₁ at q* = "
            f"{q_star:.3g} predicts {ratio:.2g}: q goes from {qs[0]:.3g} at the first layer to "
            f"{qs[-1]:.3g} at the last (unit-variance inputs), and χ₁ holds where q is near q*")


def predict_mlp(config: Mapping[str, Any]) -> dict[str, Any]:
    """The mean-field prediction for a resolved gradlab config (plain data, as in config.yaml).

    JSON-safe: fields that cannot be predicted are None, and `reasons` says why."""
    model = _section(config.get("model", {}))
    kind, depth = str(model.get("kind", "mlp")), int(model.get("depth", 10))
    act_name, norm = str(model.get("activation", "relu")), str(model.get("norm", "none"))
    out: dict[str, Any] = dict.fromkeys(
        ("activation", "sigma_w2", "sigma_b2", "q_star", "chi1", "depth_scale", "phase",
         "predicted_grad_ratio", "critical_sigma_w2"))
    out.update(predictable=False, reasons=[], notes=[], depth=depth)
    if kind != "mlp":
        out["reasons"].append(f"kind {kind}: not an MLP (recurrent nets need the theory through time)")
        return out
    if depth < 1:  # model.depth 0 is the head alone: there is no layer-to-layer recursion
        out["reasons"].append("depth 0: no hidden layers, so nothing propagates from layer to layer")
        return out
    if act_name not in ACTIVATIONS:
        out["reasons"].append(f"activation {act_name!r} is unknown to the theory")
        return out
    act = Activation(act_name, float(model.get("negative_slope", 0.01)),
                     float(model.get("prelu_init", 0.25)), float(model.get("elu_alpha", 1.0)))
    sw2, sb2, reasons, notes = implied_variances(model)
    if norm != "none":
        why = "; its gradients explode with depth at any σw², Yang et al. 2019" if norm == "batch" else ""
        reasons.append(f"model.norm {norm} breaks the mean-field assumptions (it rescales every layer{why})")
    if model.get("residual", False):
        reasons.append("residual connections: the skip adds the identity, outside the plain-MLP recursion")
    if config.get("pretrain"):
        reasons.append("pretrain: the weights are pretrained before the run, no longer at init")
    out.update(activation=act_name, sigma_w2=sw2, sigma_b2=sb2, reasons=reasons, notes=notes)
    if sb2 is not None:
        out["critical_sigma_w2"] = critical_sigma_w2(act, sb2)
    if reasons or sw2 is None or sb2 is None:
        return out
    q = fixed_point_q(act, sw2, sb2)
    chi = chi1(act, sw2, sb2, q)
    if q in (0.0, math.inf):
        notes.append(f"q* = {q}: the pre-activations {'shrink to 0' if q == 0 else 'grow without bound'}"
                     " with depth; χ₁ is its limit there")
    elif abs(length_map(q, act, sw2, sb2) - q) > 1e-6 * q:
        notes.append("the length map converges slowly here: q* is approximate")
    xi, ratio = depth_scale(chi), predicted_grad_ratio(chi, depth)
    if (far := _unsettled(act, sw2, sb2, q, depth, ratio)) is not None:
        notes.append(far)
    out.update(predictable=True, q_star=q if math.isfinite(q) else None, chi1=chi, phase=phase(chi),
               depth_scale=xi if math.isfinite(xi) else None,
               predicted_grad_ratio=ratio if math.isfinite(ratio) else None)
    return out
