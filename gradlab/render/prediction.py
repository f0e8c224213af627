"""`gradlab predict`'s panel: the mean-field theory of a config beside its network at init.

`prediction_panel(result)` renders the dict `gradlab.predict.predict` returns (plain data,
as `--json` prints it); `theory_line(prediction)` is the one-line form for a run's report
header. Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gradlab.analyse.agreement import WEIGHT, headline, run_agreement
from gradlab.analyse.theory import predicted_layer_norms
from gradlab.render.style import finite, num, short

PHASE_MEANING = {"ordered": "vanishing", "chaotic": "exploding",
                 "critical": "gradients keep their scale"}
VERDICT_STYLE = {"agrees": "green", "roughly agrees": "yellow", "disagrees": "red"}


def theory_line(prediction: dict[str, Any] | None) -> str | None:
    """'theory: ordered phase, χ₁ 0.02, ξ 0.26 layers → ‖∂L/∂z‖ first/last 2.3e-42' (the
    predicted ‖δ_1‖/‖δ_L‖ over the hidden layers, not the weight gradients' grad ratio), or
    None when there is no prediction (not an MLP, or a config the theory cannot predict).
    χ₁ has two digits, or as many as it takes not to read 1 off the critical point. Under 80
    columns."""
    if not prediction or not prediction.get("predictable"):
        return None
    xi, chi, phase = prediction.get("depth_scale"), prediction.get("chi1"), prediction.get("phase")
    chi_text = short(chi)
    for digits in (3, 4, 5, 6):
        if phase == "critical" or chi_text != "1":
            break
        chi_text = short(chi, digits)  # chaotic at 1.03 must not read "χ₁ 1"
    return (f"theory: {phase} phase, χ₁ {chi_text}, "
            f"ξ {short(xi) if xi is not None else '∞'} layers → ‖∂L/∂z‖ first/last "
            f"{short(prediction.get('predicted_grad_ratio'))}")


def theory_lines(summary: dict[str, Any]) -> list[str]:
    """A run report's lines: `theory_line`, then how the run's step-0 gradients agree
    ('measured at init ×0.143 per layer, √χ₁ 0.141: agrees'); [] without a prediction."""
    line = theory_line(summary.get("prediction"))
    if line is None:
        return []
    agreement = run_agreement(summary)
    if agreement is None:
        return [line]
    what, factor, ratio, verdict = headline(agreement)
    line2 = (f"measured {what} at init ×{factor:.3g}/layer, "
             f"√χ₁ {agreement['predicted_factor']:.3g}: {verdict}"
             + (f" (slope ratio {ratio:.2f})" if ratio is not None else ""))
    if what != WEIGHT and agreement["verdict"] != verdict:
        line2 += f"; {WEIGHT}: {agreement['verdict']}"
    left = agreement.get("left_out") or []
    if left:  # a fit that leaves layers out says which: their norm is 0 (or not finite)
        line2 += f"; {_names(left)} left out (0 or not finite)"
    return [line, line2]


def prediction_panel(result: dict[str, Any]) -> RenderableType:
    """The whole `gradlab predict` output: theory, measurement at init, their agreement."""
    theory, measured = result.get("theory") or {}, result.get("measured") or {}
    parts: list[RenderableType] = [theory_part(theory), measured_part(measured)]
    table = layer_table(measured, theory)
    if table is not None:
        parts.append(table)
    parts.append(jacobian_part(measured.get("jacobian")))
    if result.get("recurrent"):
        parts.append(recurrent_part(result["recurrent"]))
    parts.append(agreement_part(result.get("agreement"), theory))
    model = (f"{result.get('kind')}, depth {result.get('depth')}, width {result.get('width')}"
             f" · {num(result.get('seconds'), 2)} s, nothing trained")
    return Panel(Group(*parts), title=f"gradlab predict: {result.get('name')}",
                 title_align="left", subtitle=model, subtitle_align="left", expand=False)


Line = tuple[int, str, str]  # (indent, text, style)


def _block(title: str, aside: str, lines: list[Line], gap: bool = True) -> RenderableType:
    """A bold title with a dim aside, then indented lines (a wrapped line keeps its indent)."""
    head = Text(("\n" if gap else "") + title, style="bold")
    head.append(f" ({aside})" if aside else "", style="dim")
    return Group(head, *(Padding(Text(text, style=style), (0, 0, 0, indent))
                         for indent, text, style in lines))


def theory_part(theory: dict[str, Any]) -> RenderableType:
    lines: list[Line] = []
    if theory.get("sigma_w2") is not None or theory.get("sigma_b2") is not None:
        lines.append((2, f"{theory.get('activation')}: σw² {num(theory.get('sigma_w2'))}, "
                         f"σb² {num(theory.get('sigma_b2'))} (what the init implies); "
                         f"critical σw² {num(theory.get('critical_sigma_w2'))}", ""))
    if theory.get("predictable"):
        chi, phase = theory.get("chi1"), str(theory.get("phase"))
        q, xi = theory.get("q_star"), theory.get("depth_scale")
        lines.append((2, f"q* {num(q) if q is not None else '∞'}   χ₁ {num(chi)}   "
                         f"ξ {num(xi) if xi is not None else '∞'} layers   "
                         f"phase {phase} ({PHASE_MEANING.get(phase, '?')})",
                      "green" if phase == "critical" else "yellow"))
        lines.append((2, f"predicted ‖δ_1‖/‖δ_L‖ over {theory.get('depth')} hidden layers "
                         f"{num(theory.get('predicted_grad_ratio'))} "
                         f"(√χ₁ = {num(_sqrt(chi))} per layer)", ""))
    else:
        lines.append((2, "cannot predict this config:", "yellow"))
        lines += [(4, f"- {r}", "yellow") for r in theory.get("reasons") or ["no reason given"]]
    lines += [(2, f"note: {n}", "dim") for n in theory.get("notes") or []]
    return _block("theory", "mean field at init: Poole et al. 2016, Schoenholz et al. 2017",
                  lines, gap=False)


def measured_part(measured: dict[str, Any]) -> RenderableType:
    lines: list[Line] = []
    first = f"grad ratio first/last layer {num(measured.get('grad_ratio'))}"
    slope = measured.get("log_slope")
    if isinstance(slope, (int, float)) and math.isfinite(slope):
        first += f"; per layer towards the input ×{num(math.exp(slope))}"
        used, left_out = measured.get("slope_layers") or [], measured.get("slope_excluded") or []
        lines.append((2, first, ""))
        lines.append((4, f"fit over {len(used)} hidden layers"
                         + (f"; {_names(left_out)} left out (gradient 0 or not finite)"
                            if left_out else ""), "dim"))
    else:
        lines.append((2, first, ""))
    if measured.get("time_grad_ratio") is not None or measured.get("time_grads"):
        lines.append((2, "‖∂L/∂h_1‖/‖∂L/∂h_T‖ through time "
                         f"{num(measured.get('time_grad_ratio'))}", ""))
    lines += [(2, f"note: {n}", "dim") for n in measured.get("notes") or []]
    return _block("measured at init", f"one backward pass on the run's first minibatch of "
                  f"{measured.get('batch')}, train mode; loss {num(measured.get('loss'))}", lines)


def layer_table(measured: dict[str, Any], theory: dict[str, Any]) -> RenderableType | None:
    """Each probed layer's ‖∂L/∂W‖ (and ‖∂L/∂z‖ for hidden layers), with the theory's decay
    anchored at the last hidden layer's measured ‖∂L/∂W‖ where there is a prediction."""
    layers = measured.get("layers") or []
    if not layers:
        return None
    hidden = [i for i, layer in enumerate(layers) if layer.get("hidden")]
    deltas = any("delta_norm" in layer for layer in layers)
    predicted: dict[int, float] = {}
    if theory.get("predictable") and finite(theory.get("chi1")) and hidden:
        anchor = layers[hidden[-1]]["grad_norm"]
        if finite(anchor) and anchor > 0:
            rel = predicted_layer_norms(theory["chi1"], len(hidden))
            predicted = {i: anchor * r for i, r in zip(hidden, rel)}
    columns = ["layer", "shape", "‖∂L/∂W‖"] + (["‖∂L/∂z‖"] if deltas else []) \
        + (["theory ‖∂L/∂W‖"] if predicted else [])
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False)
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "shape") else "right")
    previous = -1
    for i in _shown(len(layers)):
        if i != previous + 1:
            table.add_row("⋮", *[""] * (len(columns) - 1))
        previous = i
        layer = layers[i]
        row = [layer["name"], "×".join(str(d) for d in layer.get("shape") or []),
               num(layer.get("grad_norm"))]
        if deltas:
            row.append(num(layer.get("delta_norm")) if "delta_norm" in layer else "")
        if predicted:
            row.append(num(predicted[i]) if i in predicted else "")
        table.add_row(*row)
    note = Text("theory: √χ₁ per layer, anchored at the last hidden layer's ‖∂L/∂W‖",
                style="dim")
    return Padding(Group(table, *([note] if predicted else [])), (1, 0, 0, 2))


def jacobian_part(jac: dict[str, Any] | None) -> RenderableType:
    if not jac:
        return Text("")
    lines: list[Line] = []
    for key, label in (("body", "body (read-out removed)"), ("output", "output")):
        part = jac.get(key)
        if not part:
            continue
        sv = part.get("singular_values") or {}
        shape = "×".join(str(d) for d in part.get("shape") or [])
        spread, zero = part.get("log10_spread"), sv.get("zero") or 0
        lines.append((2, f"{label} {shape}: σ {num(sv.get('min'))} … {num(sv.get('max'))}, "
                         f"median {num(sv.get('median'))}", ""))
        lines.append((4, "spread " + (f"10^{spread:.1f}" if spread is not None else "–")
                         + f", mean σ² {num(part.get('mean_squared_singular_value'))}"
                         + (f", {zero} of {sv.get('count')} numerically 0" if zero else ""),
                      "dim"))
    lines += [(2, f"note: {n}", "dim") for n in jac.get("notes") or []]
    return _block("input–output Jacobian", f"{jac.get('examples')} examples, "
                  f"{jac.get('dtype')}; dynamical isometry: Pennington et al. 2017", lines)


def recurrent_part(rec: dict[str, Any]) -> RenderableType:
    lines: list[Line] = []
    for layer in rec.get("layers") or []:
        lines.append((2, f"{layer['name']}: spectral radius ρ {num(layer.get('spectral_radius'))},"
                         f" spectral norm σ₁ {num(layer.get('spectral_norm'))}", ""))
        gates = layer.get("gates")
        if gates:
            lines.append((4, "per gate ρ: " + ", ".join(
                f"{g} {num(v.get('spectral_radius'))}" for g, v in gates.items()), "dim"))
    bound = rec.get("bound") or {}
    n = bound.get("transitions")
    upper = ""
    if bound.get("upper_bound"):
        held = {True: ", holds", False: ", VIOLATED"}.get(bound.get("holds"), "")  # type: ignore[arg-type]
        upper = f" (an upper bound{held})"
    lines.append((2, f"‖∂L/∂h_1‖/‖∂L/∂h_T‖: measured {num(bound.get('measured'))}; "
                     f"σ₁^{n} = {num(bound.get('spectral_norm_bound'))}{upper}; "
                     f"ρ^{n} = {num(bound.get('spectral_radius_rate'))}", ""))
    lines.append((4, str(bound.get("meaning")), "dim"))
    return _block("recurrent matrices", f"{rec.get('kind')}, T = {rec.get('length')} steps",
                  lines)


def agreement_part(agreement: dict[str, Any] | None, theory: dict[str, Any]) -> RenderableType:
    if not agreement:
        why = ("no theory for this config" if not theory.get("predictable")
               else "no per-layer slope was measured (fewer than two finite hidden layers)")
        return _block("theory vs measurement", "", [(2, why, "dim")])
    what, _, _, verdict = headline(agreement)
    lines: list[Line] = [(2, str(agreement.get("sentence")), VERDICT_STYLE.get(verdict, ""))]
    ratio = agreement.get("slope_ratio")
    if what != WEIGHT and agreement.get("verdict") == verdict:
        lines.append((2, f"the weight gradients {WEIGHT} (they also carry each layer's input): "
                         f"×{num(agreement.get('measured_factor'))}"
                         + (f", slope ratio {ratio:.2f}" if finite(ratio) else ""), "dim"))
    msv = agreement.get("jacobian_mean_squared")
    if msv:
        ratio = f" (×{num(msv.get('ratio'), 2)})" if finite(msv.get("ratio")) else ""
        lines.append((2, f"body Jacobian mean σ²: measured {num(msv.get('measured'))}, "
                         f"χ₁^L = {num(msv.get('predicted'))}{ratio}", "dim"))
    return _block("theory vs measurement", "", lines)


def _shown(n: int, most: int = 10) -> list[int]:
    """All layers of a shallow net; the first three, the last three and every k-th of a deep one
    (the run report's rule, with fewer rows)."""
    if n <= most:
        return list(range(n))
    k = math.ceil(n / (most - 6))
    return sorted({0, 1, 2, n - 3, n - 2, n - 1} | set(range(0, n, k)))


def _sqrt(x: Any) -> float | None:
    return math.sqrt(x) if finite(x) and x >= 0 else None


def _names(names: list[str]) -> str:
    """fc1–fc25 for a run of names, else a comma list (shortened)."""
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]}–{names[-1]} ({len(names)} layers)"
