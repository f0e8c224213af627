"""Verdicts from a run's summary: did it learn, and what happened to its signals — with remedies.

`diagnose(summary, config)` reads only the record (summary fields and the resolved config) and
returns a list of `{kind, severity, when, layers, message, remedies, fixes}`, most severe
first. Each verdict says when it held (`init`, `end`, `throughout`, or a step) and carries the
numbers it rests on. A fix is a set of `--set` overrides that applies one remedy, with what it
needs to work (Adam comes with a learning rate suited to it); `remedies` is their text. Fixes
already in place are not suggested, and they come in the order most likely to work.
"""

from __future__ import annotations

import math
from typing import Any, get_args

from gradlab.config.schema import SATURATING, Config

VANISHING_RATIO = 1e-3  # first layer's gradient this far below the last's: vanishing
EXPLODING_RATIO = 1e3
EXPLODING_NORM = 1e3  # a layer gradient norm above this at any probe
COLLAPSE_RATIO = 1e-2  # last hidden layer's activation std this far below the first's
BLOWUP_RATIO = 1e2  # ... or this far above it
SATURATED = 0.5  # a hidden layer with more of its units saturated than this is named
DEAD = 0.5
LEARNED = 0.9  # learning: the final test loss below this fraction of the baseline's
MEMORISED = 0.5  # not learning, yet the final training loss below this fraction of the baseline
BLOWN_UP_LOSS = 1e3  # an initial loss this many times the baseline: the forward pass explodes
# mixed precision: a layer losing this fraction of its gradient entries to underflow is named
UNDERFLOW = 0.1
SKIPPED = 0.1  # fp16 with a grad scaler: more than this fraction of steps skipped for overflow

Verdict = dict[str, Any]
Fix = dict[str, Any]


def diagnose(summary: dict[str, Any], config: dict[str, Any]) -> list[Verdict]:
    """Every problem the record shows, most severe first; `ok` only when the net learned and
    gradients reach every layer."""
    model, train = config.get("model") or {}, config.get("train") or {}
    ctx = _Context(summary, model, train, config.get("pretrain"))
    status = summary.get("status")
    verdicts: list[Verdict] = []
    if status == "failed":
        verdicts.append(_verdict("failed", "error", "throughout", [],
                                 f"the run failed: {summary.get('error')}",
                                 [], ["see traceback.txt in the run directory"]))
    if status == "diverged":
        verdicts.append(_diverged(ctx))
    learning = _learning(ctx)
    if learning is not None:
        verdicts.append(learning)
    precision = _precision(ctx)
    if precision is not None:
        verdicts.append(precision)
    for check in (_vanishing, _exploding, _forward, _through_time):
        found = check(ctx)
        if found is not None:
            verdicts.append(found)
            if found["kind"] == "vanishing" and precision is not None \
                    and precision["severity"] == "warning" and "were 0 in" in precision["message"]:
                found["message"] += "; in low precision part of it is underflow (precision, above)"
    verdicts += _units(ctx)
    _causes_first(verdicts)
    if ctx.clip_fraction:
        verdicts.append(_verdict(
            "clipping", "info", "throughout", [],
            f"clipping ran on {ctx.clip_fraction:.0%} of the steps (train.clip)", [], []))
    if not any(v["severity"] in ("error", "warning") for v in verdicts):
        if ctx.learned and ctx.reaches_every_layer:
            verdicts.insert(0, _verdict(
                "ok", "info", "end", [],
                f"the net learned (test loss {_fmt(ctx.test_loss)} against the baseline's "
                f"{_fmt(ctx.baseline)}){gradient_reach(summary, ' and ')}", [], []))
    # errors, then the warnings that name a cause, then not learning (their effect), then info
    order = {"error": 0, "warning": 1, "info": 3}
    return sorted(verdicts, key=lambda v: order[v["severity"]] + (v["kind"] == "not_learning"))


class _Context:
    """The numbers every rule reads, taken from the summary once."""

    def __init__(self, s: dict[str, Any], model: dict[str, Any], train: dict[str, Any],
                 pretrain: dict[str, Any] | None):
        self.s, self.model, self.train, self.pretrain = s, model, train, pretrain
        self.kind = model.get("kind", "mlp")
        self.activation = model.get("activation", "relu")
        self.layers = s.get("layers") or []
        self.over = s.get("over_run") or {}
        metrics = s.get("final_metrics") or {}
        self.test_loss = _num(metrics.get("test_loss"))
        self.train_loss = _num(metrics.get("train_loss"))
        self.accuracy = _num(metrics.get("test_accuracy"))
        self.baseline = _num(s.get("baseline_loss"))
        self.chance = _num(s.get("baseline_accuracy"))
        self.clip_fraction = _num(s.get("clip_fraction"))
        # a fifth of the way from chance to every sample right counts as learning
        self.learning_accuracy = None if self.chance is None else self.chance + 0.2 * (1 - self.chance)
        self.learned = self._learned()
        end = _num(s.get("grad_ratio_final"))
        self.reaches_every_layer = end is None or VANISHING_RATIO <= end <= EXPLODING_RATIO

    def _learned(self) -> bool | None:
        if self.s.get("status") not in ("completed", "interrupted") or self.test_loss is None:
            return None
        if self.baseline is None or self.baseline <= 0:
            return None
        if self.accuracy is not None and self.learning_accuracy is not None:
            return self.accuracy >= self.learning_accuracy
        return self.test_loss < LEARNED * self.baseline


def gradient_reach(summary: dict[str, Any], join: str) -> str:
    """What a healthy verdict may say of the gradients, after `join`: that they reach every
    layer within a few orders of magnitude only where the first/last ratio was measured; the
    layers that got no gradient at all (they took no part in the loss) by name."""
    layers = summary.get("layers") or []
    none = [str(x.get("name")) for x in layers
            if (x.get("init") or {}).get("grad_norm") is None
            and (x.get("final") or {}).get("grad_norm") is None]
    end = _num(summary.get("grad_ratio_final"))
    graded = len(layers) - len(none)
    if end is not None and VANISHING_RATIO <= end <= EXPLODING_RATIO:
        said = f"{join}gradients reach {'every other' if none else 'every'} layer within a few " \
               "orders of magnitude"
    elif end is not None:
        said = f"{join}the first layer's gradient is {_fmt(end)} × the last layer's at the end"
    elif graded == 1:
        said = f"{join}a single probed layer with a gradient: no first/last ratio"
    else:
        said = f"{join}the gradient ratio first/last layer was not measured" + (
            " (no probed layer with a gradient)" if graded == 0 else "")
    if none:
        said += (f"; {', '.join(none[:4])}{' …' if len(none) > 4 else ''} got no gradient "
                 "(took no part in the loss)")
    return said


def _verdict(kind: str, severity: str, when: str, layers: list[str], message: str,
             fixes: list[Fix], extra_remedies: list[str] | None = None) -> Verdict:
    remedies = [describe_fix(f) for f in fixes] + (extra_remedies or [])
    return {"kind": kind, "severity": severity, "when": when, "layers": layers,
            "message": message, "remedies": remedies, "fixes": fixes}


def describe_fix(fix: Fix) -> str:
    """A fix as its remedy line: the `--set` overrides, then why."""
    return " ".join(f"--set {s}" for s in fix["set"]) + f"  ({fix['why']})"


def _fix(why: str, *settings: str) -> Fix:
    return {"set": list(settings), "why": why}


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.1e}"


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _when(step: int | None) -> str:
    return "init" if step == 0 else f"step {step}"


# ---------------------------------------------------------------- rules


def _learning(ctx: _Context) -> Verdict | None:
    """`not_learning` when the final test loss has not moved meaningfully below the baseline
    (or the accuracy above chance)."""
    if ctx.learned is not False:
        return None
    if ctx.train_loss is not None and ctx.baseline is not None \
            and ctx.train_loss < MEMORISED * ctx.baseline:
        return _overfitting(ctx)
    if ctx.accuracy is not None and ctx.chance is not None:
        numbers = (f"test accuracy {ctx.accuracy:.0%} against chance {ctx.chance:.0%} "
                   f"(test loss {_fmt(ctx.test_loss)}, baseline {_fmt(ctx.baseline)})")
    else:
        numbers = (f"test loss {_fmt(ctx.test_loss)} against the baseline's "
                   f"{_fmt(ctx.baseline)}, a predictor that ignores the inputs")
    return _verdict("not_learning", "warning", "end", [],
                    f"not learning: {numbers}", _learning_fixes(ctx))


def _overfitting(ctx: _Context) -> Verdict:
    """The training set is fitted and the test split is not: the net memorised its training
    samples (their noise included) instead of learning what carries over."""
    if ctx.accuracy is not None and ctx.chance is not None:
        test = (f"its test accuracy {ctx.accuracy:.0%} is short of the {ctx.learning_accuracy:.0%} "
                f"that counts as learning (chance {ctx.chance:.0%})")
    else:
        test = (f"its test loss {_fmt(ctx.test_loss)} is no better than the baseline's "
                f"{_fmt(ctx.baseline)}, a predictor that ignores the inputs")
    fixes = []
    if not _num(ctx.train.get("weight_decay")):
        fixes.append(_fix("L2 pulls the weights towards 0, so the net cannot fit the noise",
                          "train.weight_decay=0.1"))
    return _verdict("overfitting", "warning", "end", [],
                    f"overfitting: the training loss fell to {_fmt(ctx.train_loss)} but {test}: "
                    "the net memorised its training set", fixes,
                    ["more training data", "fewer steps: stop where the test loss stops falling"])


def _causes_first(verdicts: list[Verdict]) -> None:
    """A net that does not learn because of a named cause gets that cause's remedies, once:
    the learning verdict points to them instead of repeating them."""
    learning = next((v for v in verdicts if v["kind"] == "not_learning"), None)
    causes = [v for v in verdicts if v is not learning and v["fixes"]
              and v["severity"] in ("error", "warning")]
    if learning is not None and causes:
        learning["fixes"], learning["remedies"] = [], []
        learning["message"] += f" (the cause: {', '.join(v['kind'] for v in causes)}, above)"


def _vanishing(ctx: _Context) -> Verdict | None:
    s = ctx.s
    init, end = _num(s.get("grad_ratio_init")), _num(s.get("grad_ratio_final"))
    delta = _num(s.get("delta_ratio_init"))
    worst = (ctx.over.get("grad_ratio") or {}).get("min")
    low = [(w, r) for w, r in (("init", init), ("end", end)) if r is not None
           and r < VANISHING_RATIO]
    if not low:
        return None
    names = [layer["name"] for layer in ctx.layers]
    # "0 ×" reads as a factor: an exact 0 says so
    message = ("vanishing gradients: the first layer's gradient is exactly 0 at init (every "
               "entry)" if init == 0 else f"vanishing gradients: the first layer's gradient is "
               f"{_fmt(init)} × the last layer's at init{_orders(init)}")
    if end is not None:
        message += " and at the end" if end == 0 and init == 0 else \
            " and exactly 0 at the end" if end == 0 else f" and {_fmt(end)} × at the end"
    recovered = end is not None and end >= VANISHING_RATIO
    if not recovered and worst is not None and end is not None and worst < end \
            and init != worst:  # the ratio's own low point, beside the ratio
        at = (ctx.over.get("grad_ratio") or {}).get("min_step")
        message += f" (smallest {_fmt(worst)}" + (f", at step {at})" if at is not None else ")")
    if delta is not None and delta < VANISHING_RATIO:
        message += ("; the backward signal ‖∂L/∂z‖ is exactly 0 at the input" if delta == 0
                    else f"; the backward signal ‖∂L/∂z‖ falls {_fmt(delta)} × towards the input")
    if recovered:
        return _verdict("vanishing", "info", "init", names[:1],
                        f"{message}: training recovered (ratio {_fmt(end)} at the end)", [])
    when = "throughout" if init is not None and init < VANISHING_RATIO else "end"
    severity = "info" if ctx.learned else "warning"
    if ctx.learned:
        message += "; the net learned nonetheless (the last layers do the work)"
    return _verdict("vanishing", severity, when, names[:1], message, _vanishing_fixes(ctx))


def _orders(r: float | None) -> str:
    if r is None or r <= 0 or r >= 1:
        return " (every entry exactly 0)" if r == 0 else ""
    return f" ({_magnitudes(r)})" if _magnitudes(r) else ""


def _magnitudes(r: float) -> str:
    """How many orders of magnitude below 1 a ratio in (0, 1) is, rounded, in words ("" above
    0.1: a factor of 3 is no order of magnitude)."""
    if -math.log10(r) < 1:
        return ""
    n = round(-math.log10(r))
    return f"{n} order{'s' if n > 1 else ''} of magnitude"


def _ratio_words(r: float | None) -> str:
    if r is None:
        return "–"
    if r == 0:
        return "exactly 0 ×"
    if r < 1 and _magnitudes(r):
        return f"{_fmt(r)} × ({_magnitudes(r)} below)"
    return f"{_fmt(r)} ×"


def _exploding(ctx: _Context) -> Verdict | None:
    s = ctx.s
    init, end = _num(s.get("grad_ratio_init")), _num(s.get("grad_ratio_final"))
    biggest = ctx.over.get("grad_norm_max") or {}
    big = _num(biggest.get("value"))
    by_ratio = init is not None and init > EXPLODING_RATIO
    by_norm = big is not None and big > EXPLODING_NORM
    if not (by_ratio or by_norm):
        return None
    if s.get("status") == "diverged" and not by_ratio and biggest.get("step") == 0:
        return None  # the divergence verdict says it
    parts = []
    if by_ratio:
        parts.append(f"the first layer's gradient is {_fmt(init)} × the last layer's at init")
    if by_norm:
        parts.append(f"{biggest.get('layer')}'s gradient norm reaches {_fmt(big)} at "
                     f"{_when(biggest.get('step'))}")
    message = "exploding gradients: " + "; ".join(parts)
    recovered = (end is not None and end <= EXPLODING_RATIO and not by_norm)
    if recovered:
        return _verdict("exploding", "info", "init", [],
                        f"{message}: by the end the ratio is {_fmt(end)}", [])
    when = "init" if by_ratio and not by_norm else _when(biggest.get("step"))
    layers = [str(biggest["layer"])] if by_norm and biggest.get("layer") else []
    return _verdict("exploding", "info" if ctx.learned else "warning", when, layers, message,
                    _exploding_fixes(ctx))


def _forward(ctx: _Context) -> Verdict | None:
    """The forward signal: activation std from the first hidden layer to the last."""
    stds = [v for layer in ctx.layers[:-1]
            if (v := _num((layer.get("init") or {}).get("act_std"))) is not None]
    if len(stds) < 2 or not stds[0] or not all(math.isfinite(v) for v in stds):
        return None
    ratio = stds[-1] / stds[0]
    if COLLAPSE_RATIO <= ratio <= BLOWUP_RATIO:
        return None
    grows = ratio > BLOWUP_RATIO
    message = (f"the forward signal {'grows' if grows else 'collapses'} with depth at init: "
               f"activation std goes from {_fmt(stds[0])} in the first hidden layer to "
               f"{_fmt(stds[-1])} in the last")
    severity = "info" if ctx.learned else "warning"
    return _verdict("forward_signal", severity, "init", [], message, _init_fixes(ctx))


def _precision(ctx: _Context) -> Verdict | None:
    """A bf16/fp16 run (summary `precision`): its headroom, and whether its trouble is the
    low precision (fp16 overflow, or gradient entries lost to underflow) rather than the
    network. None for fp32 runs."""
    p = ctx.s.get("precision")
    if not isinstance(p, dict) or p.get("dtype") not in ("fp16", "bf16"):
        return None
    dtype, top, tiny = p["dtype"], _num(p.get("max")), _num(p.get("tiny"))
    worst = p.get("underflow_max") or {}
    lost = _num(worst.get("fraction")) or 0.0
    zero = [str(n) for n in p.get("zero_grad_layers") or []]
    peak = p.get("z_absmax") or {}
    z = _num(peak.get("value"))
    steps = _num(ctx.s.get("steps_done")) or 0
    skipped = _num(p.get("skipped_steps")) or 0
    where = ctx.s.get("first_nonfinite") or {}
    overflowed = ((z is not None and top is not None and not z < top)
                  # with a grad scaler, overflowed gradients are its business: skipped steps
                  or (_num(p.get("overflow")) or 0) > 0 and p.get("loss_scale") != "dynamic"
                  or (ctx.s.get("status") == "diverged" and where.get("what") != "weights"
                      and z is not None and top is not None and z > top / 100))
    too_many_skips = steps > 0 and skipped / steps > SKIPPED
    room = _num(p.get("headroom"))
    headroom = (f"largest |z| {_fmt(z)}, {room:.1f} orders of magnitude below {dtype}'s "
                f"largest {top:.5g}" if z is not None and room is not None and top else
                f"largest |z| {_fmt(z)}" if z is not None else "no forward pass measured")
    if not (overflowed or too_many_skips or lost >= UNDERFLOW or zero):
        return _verdict("precision", "info", "throughout", [],
                        f"{dtype} headroom: {headroom}; gradient entries lost to underflow at "
                        f"most {lost:.1%} of a layer's", [])
    parts, layers, fixes = [], [], []
    if lost >= UNDERFLOW or zero:
        layer = str(worst.get("layer"))
        parts.append(f"{lost:.0%} of {layer}'s gradient entries were 0 in {dtype} at "
                     f"{_when(worst.get('step'))}, nonzero in a float32 backward (too small "
                     f"even for its subnormals, down to {_fmt(_num(p.get('smallest')))}; "
                     f"below its smallest normal {_fmt(tiny)} an entry keeps few digits)")
        if zero:
            parts.append(f"{', '.join(zero)} lost every gradient entry on at least one logged "
                         "step")
        layers = zero or [layer]
        if dtype == "fp16" and p.get("loss_scale") == "none":
            fixes.append(_fix("a loss scale lifts small gradients into fp16's range "
                              "(Micikevicius et al. 2018)", "train.loss_scale=dynamic"))
    if overflowed:
        parts.append(f"{dtype} overflow: |z| reached {_fmt(z)} in {peak.get('layer')} at "
                     f"{_when(peak.get('step'))}, against {dtype}'s largest "
                     f"{top if top is None else f'{top:.5g}'}")
        layers = layers or ([str(peak["layer"])] if peak.get("layer") else [])
    if too_many_skips:
        parts.append(f"the grad scaler skipped {int(skipped)} of {int(steps)} steps for "
                     f"overflowed gradients (scale down to {_fmt(_num(p.get('scale_min')))})")
    if dtype == "fp16":
        fixes.append(_fix("bfloat16 has float32's range: no overflow at 65504, no underflow "
                          "at 6e-8", "train.precision=bf16"))
    if overflowed or too_many_skips:
        if not ctx.train.get("clip"):
            fixes.append(_fix("bounds each step's update, so weights and activations stay "
                              "in range", "train.clip.max_norm=1.0"))
    fixes.append(_fix("full precision", "train.precision=fp32"))
    trouble = ctx.s.get("status") == "diverged" or ctx.learned is False or bool(zero)
    # the trouble is the dtype's range: float32 (the reference backward) keeps what it loses
    what = "loses gradients float32 keeps" if lost >= UNDERFLOW or zero else "runs out of range"
    message = f"precision: {dtype} {what}: " + "; ".join(parts) + f"; {headroom}"
    return _verdict("precision", "warning" if trouble else "info", "throughout", layers,
                    message, _not_in_place(fixes, ctx))


def _diverged(ctx: _Context) -> Verdict:
    where = ctx.s.get("first_nonfinite") or {}
    # a module outside the probed layers (a recurrent cell, say) is named by the sentinel
    layer = where.get("layer") or where.get("module")
    phase = where.get("phase") or ""
    if phase.startswith("pretrain_layer_"):
        return _diverged_in_pretraining(where, phase, ctx.pretrain or {})
    kind, step = where.get("what", ""), where.get("step")
    what = {"loss": "the loss", "output": f"the output of {layer}",
            "activations": f"the activations of {layer}", "gradient": f"the gradient of {layer}",
            "weights": f"the weights of {layer}", "input": "the batch"}.get(kind, "a value")
    pass_ = {"forward": " in the forward pass", "backward": " in backprop"}.get(
        where.get("direction") or "", "") if kind != "loss" else ""
    msg = f"{what} became NaN/Inf{pass_} at step {step}"
    if kind == "loss" and where.get("direction") == "forward":
        msg += " (every layer's output was finite)"
    initial, baseline = _num(ctx.s.get("initial_loss")), ctx.baseline
    blown = (initial is None or not math.isfinite(initial)
             or (baseline is not None and baseline > 0 and initial > BLOWN_UP_LOSS * baseline))
    at_init = isinstance(step, int) and step <= 1 and (blown or kind in ("output", "activations"))
    if at_init:  # no update has been made yet, or one: the network itself is the cause
        msg += (f"; the forward pass already explodes at init (initial loss {_fmt(initial)}"
                + (f", baseline {_fmt(baseline)})" if baseline is not None else ")"))
        fixes = _init_fixes(ctx, exploding=True)
    else:
        fixes = _lr_fixes(ctx)
    return _verdict("diverged", "error", _when(step) if isinstance(step, int) else "end",
                    [layer] if layer else [], msg, fixes)


def _diverged_in_pretraining(where: dict[str, Any], phase: str,
                             pretrain: dict[str, Any]) -> Verdict:
    """Layer k's autoencoder diverged: its learning rate is pretrain.lr, not train.lr."""
    k, layer = phase.removeprefix("pretrain_layer_"), where.get("layer")
    what = where.get("what") or "value"
    msg = (f"the {what} of {layer} became NaN/Inf at step {where.get('step')} of layer-wise "
           f"pretraining (phase {phase}, hidden layer {k}); fine-tuning did not run")
    lr = _num(pretrain.get("lr")) or 0.01
    fixes = [_fix("a smaller pretraining step", f"pretrain.lr={lr / 10:g}")]
    if pretrain.get("optimizer") == "sgd":
        fixes.append(_fix("per-parameter step sizes", "pretrain.optimizer=adam"))
    return _verdict("diverged", "error", f"step {where.get('step')}", [layer] if layer else [],
                    msg, fixes)


def _units(ctx: _Context) -> list[Verdict]:
    """Saturated (sigmoid, tanh) or dead (ReLU) units at the end, named layer by layer."""
    found = []
    hidden = ctx.layers[:-1]
    for stat, limit, kind in (("act_saturated", SATURATED, "saturated"), ("act_dead", DEAD, "dead")):
        values = [(layer["name"], v) for layer in hidden
                  if (v := _num((layer.get("final") or {}).get(stat))) is not None
                  and math.isfinite(v)]
        bad = sorted(((n, v) for n, v in values if v > limit), key=lambda nv: -nv[1])
        if not bad:
            continue
        shown = ", ".join(f"{n} {v:.0%}" for n, v in bad[:4]) + (" …" if len(bad) > 4 else "")
        if kind == "saturated":
            msg = (f"saturated units: in {len(bad)} of {len(values)} hidden layers more than "
                   f"half the units sit at their limits at the end ({shown})")
            fixes = _saturation_fixes(ctx)
        else:
            msg = (f"dead units: in {len(bad)} of {len(values)} hidden layers more than half "
                   f"the ReLU units output 0 for a whole batch at the end ({shown})")
            fixes = _dead_fixes(ctx)
        found.append(_verdict(kind, "info" if ctx.learned else "warning", "end",
                              [n for n, _ in bad], msg, fixes))
    return found


def _through_time(ctx: _Context) -> Verdict | None:
    """‖∂L/∂h₁‖ / ‖∂L/∂h_T‖ of a recurrent model, judged with what the net learned."""
    init, end = _num(ctx.s.get("time_grad_ratio_init")), _num(ctx.s.get("time_grad_ratio_final"))
    if init is None:
        return None
    if init < VANISHING_RATIO:
        msg = (f"vanishing through time: ‖∂L/∂h₁‖ is {_ratio_words(init)} ‖∂L/∂h_T‖ at init"
               + (f", {_ratio_words(end)} at the end" if end is not None else ""))
        if ctx.learned:
            return _verdict("vanishing_time", "info", "init", [],
                            msg + "; the task was learned all the same "
                            f"(test loss {_fmt(ctx.test_loss)}, baseline {_fmt(ctx.baseline)})",
                            [])
        return _verdict("vanishing_time", "warning", "throughout" if end is not None
                        and end < VANISHING_RATIO else "init", [], msg, _time_fixes(ctx))
    if init > EXPLODING_RATIO:
        msg = f"exploding through time: ‖∂L/∂h₁‖ is {_fmt(init)} × ‖∂L/∂h_T‖ at init"
        fixes = [] if ctx.train.get("clip") else [
            _fix("bounds each step's update", "train.clip.max_norm=1.0")]
        fixes += _recurrent_fixes(ctx, "stops the growth step by step")
        return _verdict("exploding_time", "info" if ctx.learned else "warning", "init", [], msg,
                        _not_in_place(fixes, ctx))
    return None


# ---------------------------------------------------------------- remedies


def _not_in_place(fixes: list[Fix], ctx: _Context) -> list[Fix]:
    """Drop fixes whose every setting the config already has, and repeated ones."""
    kept, seen = [], set()
    for f in fixes:
        key = tuple(f["set"])
        if key in seen or all(_already(s, ctx) for s in f["set"]):
            continue
        seen.add(key)
        kept.append(f)
    return kept


def _already(setting: str, ctx: _Context) -> bool:
    key, _, value = setting.partition("=")
    node: Any = {"model": ctx.model, "train": ctx.train, "pretrain": ctx.pretrain}
    for part in key.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        else:
            return False
    if isinstance(node, dict):
        # `--set model.init=kaiming_normal` replaces the whole mapping: it is in place only if
        # the mapping already is what the setting makes (a gain of 1.75 is not)
        made = _mapping_made_by(key, value)
        if made is not None:
            return all(made.get(k) == v for k, v in node.items())
        node = node.get("scheme", node.get("name"))
    return str(node).lower() == value.lower() or (value in ("true", "false")
                                                  and str(node).lower() == value)


def _mapping_made_by(key: str, value: str) -> dict[str, Any] | None:
    """What `--set key=value` puts at a mapping section of the schema (`model.init`,
    `train.schedule`, ...): the section's defaults with the shorthand set; None where `key` is
    not such a section or `value` is not valid there."""
    section: Any = Config
    for part in key.split("."):
        field = getattr(section, "model_fields", {}).get(part)
        if field is None:
            return None
        section = next((t for t in (field.annotation, *get_args(field.annotation))
                        if isinstance(t, type) and hasattr(t, "model_fields")), None)
        if section is None:
            return None
    try:
        return dict(section.model_validate(value).model_dump())
    except ValueError:
        return None


def _adam(ctx: _Context) -> list[Fix]:
    """Adam at its usual rate, for a run that does not use Adam already (for one that does,
    its reason does not hold, and a new rate alone is not this remedy)."""
    if str(ctx.train.get("optimizer", "")).lower() == "adam":
        return []
    return [_fix("per-parameter step sizes rescale small gradients; 1e-3 is Adam's usual rate",
                 "train.optimizer=adam", "train.lr=0.001")]


def _vanishing_fixes(ctx: _Context) -> list[Fix]:
    fixes = []
    if ctx.kind != "mlp":
        return _time_fixes(ctx)
    if ctx.activation in SATURATING:
        fixes.append(_fix("normalising each layer's pre-activations keeps the units out of "
                          "their flat tails", "model.norm=batch"))
        fixes.append(_fix("a non-saturating activation with the init made for it",
                          "model.activation=relu", "model.init=kaiming_normal"))
        # the order `gradlab fix` ranked them in on deep_sigmoid and digits_sigmoid_deep
        if not ctx.pretrain and not ctx.model.get("residual"):
            fixes.append(_fix("greedy layer-wise pretraining starts each layer from weights "
                              "that pass the signal on", "pretrain.method=autoencoder"))
        fixes.append(_fix("identity skips give the gradient a path past every activation",
                          "model.residual=true", "model.residual_style=pre"))
        fixes += _adam(ctx)
    else:
        fixes.append(_fix("He init keeps the signal's variance through ReLU-family layers",
                          "model.init=kaiming_normal"))
        fixes.append(_fix("normalised pre-activations", "model.norm=batch"))
        fixes.append(_fix("identity skips", "model.residual=true", "model.residual_style=pre"))
        fixes += _adam(ctx)
    return _not_in_place(fixes, ctx)


def _exploding_fixes(ctx: _Context) -> list[Fix]:
    fixes = _init_fixes(ctx, exploding=True)
    if not ctx.train.get("clip"):
        fixes.append(_fix("bounds each step's update", "train.clip.max_norm=1.0"))
    fixes += _lr_fixes(ctx)
    return _not_in_place(fixes, ctx)


def _init_fixes(ctx: _Context, exploding: bool = False) -> list[Fix]:
    """Remedies for a network that is wrong before any step: its init, its skips, its norms."""
    if ctx.kind != "mlp":
        return _not_in_place(_recurrent_fixes(ctx), ctx)
    fixes = []
    if ctx.model.get("residual") and exploding:
        fixes.append(_fix("each block starts as the identity, so depth adds nothing at init "
                          "(Fixup, SkipInit, ReZero)", "model.residual_init=zero"))
        fixes.append(_fix("a small constant on each branch", "model.residual_scale=0.1"))
    want = "xavier_normal" if ctx.activation in (*SATURATING, "identity") else "kaiming_normal"
    fixes.append(_fix("the init made for this activation", f"model.init={want}"))
    if ctx.model.get("norm", "none") == "none":
        fixes.append(_fix("normalised pre-activations", "model.norm=batch"))
    return _not_in_place(fixes, ctx)


def _recurrent_fixes(ctx: _Context, why: str = "") -> list[Fix]:
    """An orthogonal W_hh (spectral radius 1) for a recurrent model; where it is orthogonal
    already but scaled by a gain above 1 (radius = gain), that gain brought back to 1."""
    init = ctx.model.get("recurrent_init")
    scheme = init.get("scheme") if isinstance(init, dict) else init
    gain = _num(init.get("gain")) if isinstance(init, dict) else None
    tail = f": {why}" if why else ""
    if scheme == "orthogonal" and gain is not None and gain > 1:
        return [_fix(f"now {gain:g}; an orthogonal W_hh of gain 1 has spectral radius 1{tail}",
                     "model.recurrent_init.gain=1.0")]
    return [_fix(f"a spectral radius of at most 1{tail}", "model.recurrent_init=orthogonal")]


def _lr_fixes(ctx: _Context) -> list[Fix]:
    lr = _num(ctx.train.get("lr")) or 0.01
    fixes = [_fix(f"a tenth of the step size (now {lr:g})", f"train.lr={lr / 10:g}")]
    if not ctx.train.get("clip"):
        fixes.append(_fix("bounds each step's update", "train.clip.max_norm=1.0"))
    return _not_in_place(fixes, ctx)


def _learning_fixes(ctx: _Context) -> list[Fix]:
    scheme = (ctx.model.get("init") or {}).get("scheme", "default")
    fixes = []
    if scheme in ("constant", "zeros"):
        want = "xavier_normal" if ctx.activation in SATURATING else "kaiming_normal"
        fixes.append(_fix("a constant init makes every unit of a layer the same unit: random "
                          "weights break the symmetry", f"model.init={want}"))
    if ctx.kind != "mlp":
        fixes += _time_fixes(ctx)
    else:
        fixes += _vanishing_fixes(ctx) if ctx.activation in SATURATING else [
            _fix("normalised pre-activations", "model.norm=batch"), *_adam(ctx),
            _fix("He init", "model.init=kaiming_normal")]
    return _not_in_place(fixes, ctx)


def _saturation_fixes(ctx: _Context) -> list[Fix]:
    return _not_in_place([
        _fix("normalised pre-activations stay in the linear range", "model.norm=batch"),
        _fix("Glorot's init keeps pre-activations in the linear range", "model.init=xavier_normal"),
        _fix("a non-saturating activation", "model.activation=relu", "model.init=kaiming_normal"),
    ], ctx)


def _dead_fixes(ctx: _Context) -> list[Fix]:
    lr = _num(ctx.train.get("lr")) or 0.01
    return _not_in_place([
        _fix("a negative slope keeps a gradient for units below 0", "model.activation=leaky_relu"),
        _fix("large steps push units where they never fire again", f"train.lr={lr / 10:g}"),
        _fix("He init", "model.init=kaiming_normal"),
    ], ctx)


def _time_fixes(ctx: _Context) -> list[Fix]:
    fixes = []
    if ctx.kind == "rnn":
        fixes.append(_fix("gates keep a cell state that carries the gradient back in time; "
                          "a forget bias of 1 keeps 73% of it per step",
                          "model.kind=lstm", "model.forget_bias=1.0"))
        fixes.append(_fix("a gated cell", "model.kind=gru"))
        want = "identity" if ctx.model.get("rnn_nonlinearity") == "relu" else "orthogonal"
        fixes.append(_fix("recurrent weights that preserve the norm", f"model.recurrent_init={want}"))
    elif ctx.kind == "lstm" and ctx.model.get("forget_bias") is None:
        fixes.append(_fix("the cell keeps more of itself each step", "model.forget_bias=1.0"))
    if ctx.kind != "rnn":
        fixes.append(_fix("recurrent weights that preserve the norm",
                          "model.recurrent_init=orthogonal"))
    return _not_in_place(fixes, ctx)
