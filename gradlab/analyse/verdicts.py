"""Verdicts from a run's summary: vanishing, exploding, diverged, saturated, dead — with remedies.

`diagnose(summary, config)` reads only the record (summary fields and the resolved config)
and returns a list of `{kind, severity, layers, message, remedies}`. Each remedy names the
config setting to change, and remedies already in place are not suggested.
"""

from __future__ import annotations

import math
from typing import Any

from gradlab.config.schema import SATURATING

VANISHING_RATIO = 1e-3  # first layer's gradient this far below the last's: vanishing
EXPLODING_RATIO = 1e3
EXPLODING_NORM = 1e3  # a layer gradient norm above this at any probe
COLLAPSE_RATIO = 1e-2  # last hidden layer's activation std this far below the first's
SATURATED = 0.5  # mean fraction of saturated units over the hidden layers
DEAD = 0.5


def diagnose(summary: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every problem the record shows, most severe first; an `ok` verdict when there is none."""
    model, train = config.get("model", {}), config.get("train", {})
    layers = summary.get("layers") or []
    verdicts: list[dict[str, Any]] = []
    status = summary.get("status")
    if status == "diverged":
        verdicts.append(_diverged(summary, model, train, config.get("pretrain")))
    if status == "failed":
        verdicts.append(_verdict("failed", "error", [], f"the run failed: {summary.get('error')}",
                                 ["see traceback.txt in the run directory"]))
    for when in ("init", "final"):
        found = _vanishing(summary, layers, when, model, train, config.get("pretrain"))
        if found:
            verdicts.append(found)
            break
    exploding = _exploding(summary, layers, model, train)
    if exploding and status != "diverged":
        verdicts.append(exploding)
    verdicts += _units(layers, model)
    time_verdict = _through_time(summary, model, train)
    if time_verdict:
        verdicts.append(time_verdict)
    if not verdicts:
        verdicts.append(_verdict("ok", "info", [], "gradients reach every layer within a few "
                                 "orders of magnitude; no saturation or dead units found", []))
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(verdicts, key=lambda v: order[v["severity"]])


def _verdict(kind: str, severity: str, layers: list[str], message: str,
             remedies: list[str]) -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "layers": layers, "message": message,
            "remedies": remedies}


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def _diverged(summary: dict[str, Any], model: dict[str, Any], train: dict[str, Any],
              pretrain: dict[str, Any] | None) -> dict[str, Any]:
    where = summary.get("first_nonfinite") or {}
    layer = where.get("layer")
    phase = where.get("phase") or ""
    if phase.startswith("pretrain_layer_"):
        return _diverged_in_pretraining(where, phase, pretrain or {})
    what = {"loss": "the loss", "gradient": f"the gradient of {layer}",
            "weights": f"the weights of {layer}"}.get(where.get("what", ""), "a value")
    msg = f"{what} became NaN/Inf at step {where.get('step')}"
    if where.get("what") == "loss" and layer:
        msg += f" (first non-finite gradient in backprop: {layer})"
    remedies = [f"lower train.lr (now {train.get('lr')})"]
    if not train.get("clip"):
        remedies.append("set train.clip: {by: norm, max_norm: 1.0}")
    remedies += _init_and_norm_remedies(model)
    return _verdict("diverged", "error", [layer] if layer else [], msg, remedies)


def _diverged_in_pretraining(where: dict[str, Any], phase: str,
                             pretrain: dict[str, Any]) -> dict[str, Any]:
    """Layer k's autoencoder diverged: its learning rate is pretrain.lr, not train.lr."""
    k, layer = phase.removeprefix("pretrain_layer_"), where.get("layer")
    what = where.get("what") or "value"
    msg = (f"the {what} of {layer} became NaN/Inf at step {where.get('step')} of layer-wise "
           f"pretraining (phase {phase}, hidden layer {k}); fine-tuning did not run")
    remedies = [f"lower pretrain.lr (now {pretrain.get('lr')})"]
    if pretrain.get("optimizer") == "sgd":
        remedies.append("pretrain.optimizer: adam (per-parameter step sizes)")
    return _verdict("diverged", "error", [layer] if layer else [], msg, remedies)


def _vanishing(summary: dict[str, Any], layers: list[dict[str, Any]], when: str,
               model: dict[str, Any], train: dict[str, Any],
               pretrain: dict[str, Any] | None) -> dict[str, Any] | None:
    ratio = summary.get(f"grad_ratio_{when}")
    stds = [s for layer in layers[:-1]
            if (s := _get(layer, when, "act_std")) is not None and math.isfinite(s)]
    collapsed = len(stds) >= 2 and stds[0] > 0 and stds[-1] / stds[0] < COLLAPSE_RATIO
    if not ((ratio is not None and ratio < VANISHING_RATIO) or collapsed):
        return None
    names = [layer["name"] for layer in layers]
    if ratio is not None and ratio < VANISHING_RATIO:
        if ratio == 0:
            msg = (f"vanishing gradients at {when}: the first layer's gradient is exactly 0 "
                   "(it underflowed), while the last layer's is not")
        else:
            msg = (f"vanishing gradients at {when}: the first layer's gradient is "
                   f"{_fmt(ratio)} × the last layer's ({-math.log10(ratio):.0f} orders of magnitude)")
    else:
        msg = (f"the forward signal collapses with depth at {when}: activation std falls from "
               f"{_fmt(stds[0])} in the first layer to {_fmt(stds[-1])} in the last")
    remedies = []
    act = model.get("activation")
    if act in SATURATING:
        remedies.append(f"model.activation: relu with model.init: kaiming_normal (now {act})")
    remedies += _init_and_norm_remedies(model)
    if model.get("kind", "mlp") == "mlp" and not model.get("residual"):
        remedies.append("model.residual: true (skip connections carry the gradient past layers)")
        if act in SATURATING and not pretrain:
            remedies.append("pretrain: {method: autoencoder} (greedy layer-wise "
                            "pretraining starts every layer from weights that pass the signal on)")
    if train.get("optimizer") == "sgd":
        remedies.append("train.optimizer: adam (per-parameter step sizes rescale small gradients)")
    return _verdict("vanishing", "warning", names[:1], msg, remedies)


def _exploding(summary: dict[str, Any], layers: list[dict[str, Any]], model: dict[str, Any],
               train: dict[str, Any]) -> dict[str, Any] | None:
    ratio = summary.get("grad_ratio_init")
    big = [(layer["name"], n) for layer in layers for when in ("init", "final")
           if (n := _get(layer, when, "grad_norm")) is not None and n > EXPLODING_NORM]
    if not ((ratio is not None and ratio > EXPLODING_RATIO) or big):
        return None
    if big:
        name, norm = max(big, key=lambda b: b[1])
        msg = f"exploding gradients: {name}'s gradient norm reaches {_fmt(norm)}"
    else:
        assert ratio is not None  # no layer's norm is too big, so the ratio is
        msg = (f"exploding gradients: the first layer's gradient is {_fmt(ratio)} × the last "
               "layer's at init")
    remedies = [] if train.get("clip") else ["set train.clip: {by: norm, max_norm: 1.0}"]
    remedies.append(f"lower train.lr (now {train.get('lr')})")
    remedies += _init_and_norm_remedies(model)
    return _verdict("exploding", "warning", [b[0] for b in big][:3], msg, remedies)


def _units(layers: list[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """Saturated (sigmoid, tanh) or dead (ReLU family) units, at the end of the run."""
    found = []
    hidden = layers[:-1]
    for stat, limit, kind in (("act_saturated", SATURATED, "saturated"), ("act_dead", DEAD, "dead")):
        values = [(layer["name"], v) for layer in hidden
                  if (v := _get(layer, "final", stat)) is not None and math.isfinite(v)]
        if not values:
            continue
        mean = sum(v for _, v in values) / len(values)
        if mean <= limit:
            continue
        worst = [n for n, v in sorted(values, key=lambda nv: -nv[1])[:3]]
        if kind == "saturated":
            msg = f"saturated units: on average {mean:.0%} of hidden units sit at their limits"
            remedies = ["model.init: xavier_normal (keeps pre-activations in the linear range)",
                        "model.norm: batch", "model.activation: relu"]
        else:
            msg = f"dead units: on average {mean:.0%} of hidden units output ≤ 0 for a whole batch"
            remedies = ["model.activation: leaky_relu", "lower train.lr",
                        "model.init: kaiming_normal"]
        found.append(_verdict(kind, "warning", worst, msg, [r for r in remedies
                                                            if not _already(r, model)]))
    return found


def _through_time(summary: dict[str, Any], model: dict[str, Any],
                  train: dict[str, Any]) -> dict[str, Any] | None:
    """‖∂L/∂h₁‖ / ‖∂L/∂h_T‖ of a recurrent model: vanishing or exploding over the time steps.

    A gradient that vanished at init but reaches h₁ at the end (an LSTM that learnt to keep
    its cell) is reported as info; one still vanishing at the end is a warning.
    """
    ratio, final = summary.get("time_grad_ratio_init"), summary.get("time_grad_ratio_final")
    if ratio is None:
        return None
    recurrent = (model.get("recurrent_init") or {}).get("scheme", "default")
    if ratio < VANISHING_RATIO:
        size = "exactly 0 (it underflowed)" if ratio == 0 else f"{_fmt(ratio)} ×"
        msg = f"vanishing through time: ‖∂L/∂h₁‖ is {size} ‖∂L/∂h_T‖ at init"
        if final is not None and final >= VANISHING_RATIO:
            return _verdict("vanishing_time", "info", [], msg + f", but {_fmt(final)} × at the "
                            "end: training opened a path back through time", [])
        if final is not None:
            msg += " and exactly 0 at the end" if final == 0 else f" and {_fmt(final)} × at the end"
        remedies = []
        if model.get("kind") == "rnn":
            remedies.append("model.kind: lstm (or gru)")
            want = "identity" if model.get("rnn_nonlinearity") == "relu" else "orthogonal"
            if recurrent != want:
                remedies.append(f"model.recurrent_init: {want} (now {recurrent})")
        elif model.get("kind") == "lstm" and model.get("forget_bias") is None:
            remedies.append("model.forget_bias: 1.0 (the cell keeps more of itself each step)")
        if model.get("kind") != "rnn" and recurrent != "orthogonal":
            remedies.append(f"model.recurrent_init: orthogonal (now {recurrent})")
        return _verdict("vanishing_time", "warning", [], msg, remedies)
    if ratio > EXPLODING_RATIO:
        msg = f"exploding through time: ‖∂L/∂h₁‖ is {_fmt(ratio)} × ‖∂L/∂h_T‖ at init"
        remedies = [] if train.get("clip") else ["set train.clip: {by: norm, max_norm: 1.0}"]
        remedies.append("model.recurrent_init: orthogonal with gain ≤ 1 (recurrent weights "
                        "with a spectral radius above 1 grow the gradient each step back)")
        return _verdict("exploding_time", "warning", [], msg, remedies)
    return None


def _init_and_norm_remedies(model: dict[str, Any]) -> list[str]:
    remedies = []
    act = model.get("activation", "relu")
    scheme = (model.get("init") or {}).get("scheme", "default")
    want = "xavier_normal" if act in (*SATURATING, "identity") else "kaiming_normal"
    if scheme != want and model.get("kind", "mlp") == "mlp":
        remedies.append(f"model.init: {want} (now {scheme})")
    if model.get("norm", "none") == "none" and model.get("kind", "mlp") == "mlp":
        remedies.append("model.norm: batch (or layer)")
    return remedies


def _already(remedy: str, model: dict[str, Any]) -> bool:
    key, _, value = remedy.partition(": ")
    value = value.split(" ")[0]
    current = {"model.activation": model.get("activation"), "model.norm": model.get("norm"),
               "model.init": (model.get("init") or {}).get("scheme")}.get(key)
    return current == value


def _get(layer: dict[str, Any], when: str, stat: str) -> float | None:
    values = layer.get(when) or {}
    v = values.get(stat)
    return float(v) if isinstance(v, (int, float)) else None
