"""`gradlab predict`: mean-field theory against one measured backward pass, the input–output
Jacobian, recurrent spectra; the summary's `prediction` field, the report line and the
prediction drawn in grad_flow.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny, tiny_config
from typer.testing import CliRunner

from gradlab.analyse.agreement import fit_log_slope, run_agreement, slope_agreement
from gradlab.analyse.theory import predict_mlp
from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.cli import app
from gradlab.config import config_from_dict, resolved
from gradlab.predict import jacobians, predict, spectrum
from gradlab.render.prediction import theory_lines

SIGMOID = {"data": {"n_features": 32}, "model": {"depth": 8, "width": 32, "activation": "sigmoid"}}


def invoke(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


def sequence(kind: str = "rnn", **model: Any) -> dict[str, Any]:
    raw = tiny(model={"kind": kind, "depth": 1, "width": 8, **model})
    raw["data"] = {"kind": "adding", "n_samples": 64, "length": 10}
    return raw


def built_like_a_run(cfg):
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    return data, build_model(cfg.model, data.n_in, data.n_out)


def test_predict_a_sigmoid_mlp_ordered_and_measured_alike(write_yaml) -> None:
    path = write_yaml(tiny(**SIGMOID), "sig.yaml")
    result = invoke("predict", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("theory", "χ₁", "phase ordered (vanishing)", "measured at init", "fc1", "head",
                 "input–output Jacobian", "theory vs measurement", "agrees"):
        assert text in out
    data = json.loads(invoke("predict", path, "--json").stdout)
    theory, measured, agreement = data["theory"], data["measured"], data["agreement"]
    assert theory["predictable"] and theory["phase"] == "ordered" and theory["chi1"] < 0.1
    assert measured["log_slope"] < 0  # gradients shrink towards the input
    assert [row["name"] for row in measured["layers"]] == [f"fc{i}" for i in range(1, 9)] + ["head"]
    assert 0.5 <= agreement["slope_ratio"] <= 2 and agreement["verdict"] != "disagrees"
    assert math.isclose(agreement["predicted_factor"], math.sqrt(theory["chi1"]))
    assert math.isclose(agreement["measured_factor"], math.exp(measured["log_slope"]))
    assert 0.5 <= agreement["delta_slope_ratio"] <= 2
    jac = measured["jacobian"]
    assert jac["body"]["shape"] == [32, 32] and jac["output"]["shape"] == [1, 32]
    assert jac["body"]["singular_values"]["count"] == jac["examples"] * 32


def test_a_batch_norm_mlp_is_not_predicted_but_still_measured(write_yaml) -> None:
    path = write_yaml(tiny(model={"norm": "batch"}), "bn.yaml")
    result = invoke("predict", path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert not data["theory"]["predictable"] and data["agreement"] is None
    assert any(r.startswith("model.norm batch") for r in data["theory"]["reasons"])
    measured = data["measured"]
    assert len(measured["layers"]) == 5 and all(r["grad_norm"] > 0 for r in measured["layers"])
    assert measured["grad_ratio"] > 0 and measured["jacobian"]["body"]["singular_values"]["max"] > 0
    assert any("batch norm" in n for n in measured["jacobian"]["notes"])
    shown = invoke("predict", path)
    assert shown.exit_code == 0 and "cannot predict this config" in shown.stdout
    assert "model.norm batch" in shown.stdout and "measured at init" in shown.stdout


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_recurrent_spectral_radius_is_that_of_w_hh(kind: str) -> None:
    cfg = config_from_dict(sequence(kind), "seq.yaml")
    result = predict(cfg)
    _, built = built_like_a_run(cfg)
    W = built.model.rnns[0].weight_hh_l0.detach().double()
    blocks = W.chunk({"rnn": 1, "lstm": 4}[kind], dim=0)
    by_hand = max(float(torch.linalg.eigvals(b).abs().max()) for b in blocks)
    (layer,) = result["recurrent"]["layers"]
    assert layer["name"] == "l1.hh"
    assert math.isclose(layer["spectral_radius"], by_hand, rel_tol=1e-9)
    assert math.isclose(layer["spectral_norm"],
                        max(float(torch.linalg.matrix_norm(b, 2)) for b in blocks), rel_tol=1e-9)
    bound = result["recurrent"]["bound"]
    assert bound["transitions"] == 9 and bound["upper_bound"] == (kind == "rnn")
    assert math.isclose(bound["spectral_norm_bound"], layer["spectral_norm"] ** 9, rel_tol=1e-9)
    assert result["measured"]["time_grad_ratio"] == bound["measured"] > 0
    if kind == "rnn":  # |tanh'| ≤ 1: the measured ratio cannot exceed σ₁^(T−1)
        assert bound["holds"] is True
    else:
        assert set(layer["gates"]) == {"i", "f", "g", "o"} and bound["holds"] is None
        assert "indicative only" in bound["meaning"]
    assert not result["theory"]["predictable"] and result["measured"]["log_slope"] is None


def test_json_round_trip_and_determinism(write_yaml) -> None:
    path = write_yaml(tiny(**SIGMOID), "sig.yaml")
    result = invoke("predict", path, "--json", "--seed", "3", "--device", "cpu",
                    "--set", "model.depth=4")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # nothing else on stdout
    cfg = tiny_config(seed=3, data=SIGMOID["data"], model={**SIGMOID["model"], "depth": 4})
    direct = predict(cfg)
    assert json.loads(json.dumps(direct, allow_nan=False)) == direct  # JSON-safe as returned
    printed.pop("seconds"), direct.pop("seconds")
    assert printed == direct and printed["depth"] == 4
    assert printed["theory"] == json.loads(json.dumps(predict_mlp(resolved(cfg))))


def test_a_bad_config_exits_2(write_yaml) -> None:
    bad = write_yaml(tiny(model={"depth": -1}), "bad.yaml")
    result = invoke("predict", bad)
    assert result.exit_code == 2 and f"{bad}: model.depth" in result.stderr
    assert invoke("predict", write_yaml("model: [", "broken.yaml")).exit_code == 2
    ok = write_yaml(tiny(), "ok.yaml")
    unknown = invoke("predict", ok, "--set", "model.activation=swish")
    assert unknown.exit_code == 2 and "model.activation" in unknown.stderr


def test_measured_gradients_are_those_of_a_runs_step_0(run_tiny) -> None:
    summary = run_tiny().summary
    measured = predict(tiny_config())["measured"]["layers"]
    for row, layer in zip(measured, summary["layers"], strict=True):
        assert row["name"] == layer["name"]
        assert math.isclose(row["grad_norm"], layer["init"]["grad_norm"], rel_tol=1e-6)


def test_the_jacobian_of_a_linear_net_is_the_product_of_its_weights() -> None:
    cfg = tiny_config(data={"n_features": 6}, model={"depth": 2, "width": 5,
                                                     "activation": "identity"})
    data, built = built_like_a_run(cfg)
    fc1, fc2, head = (layer.weight.detach().double() for layer in built.layers)
    x = data.x_train[:3].double()
    net = built.model.double()
    J = jacobians(net, x)
    assert J.shape == (3, 1, 6)
    assert torch.allclose(J, (head @ fc2 @ fc1).expand(3, 1, 6), atol=1e-12)
    result = predict(cfg)["measured"]["jacobian"]["body"]
    s = torch.linalg.svdvals(fc2 @ fc1)  # the same for every example: the net is linear
    sv = result["singular_values"]
    assert result["shape"] == [5, 6] and sv["count"] == 8 * 5 and sv["zero"] == 0
    assert math.isclose(sv["max"], float(s.max()), rel_tol=1e-9)
    assert math.isclose(sv["min"], float(s.min()), rel_tol=1e-9)
    assert math.isclose(result["mean_squared_singular_value"], float((s**2).mean()), rel_tol=1e-9)
    assert math.isclose(result["spread"], float(s.max() / s.min()), rel_tol=1e-9)


def test_spectrum_counts_numerically_zero_singular_values() -> None:
    J = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))[None]
    sv = spectrum(J)
    # the median of the nonzero 3 and 1 is 2, not the lower middle value (Tensor.median's 1)
    assert sv["singular_values"] == {"min": 1.0, "median": 2.0, "max": 3.0, "count": 3, "zero": 1}
    assert sv["spread"] == 3.0 and math.isclose(sv["mean_squared_singular_value"], 10 / 3)


def test_batch_norm_is_frozen_at_the_first_minibatch_as_training_normalised_it() -> None:
    """In eval mode the frozen net gives the first minibatch the outputs train mode gave it
    (train mode divides by the biased batch variance; a running variance is unbiased)."""
    from gradlab.predict import freeze_at_first_batch
    from gradlab.train.loop import batches

    cfg = tiny_config(model={"depth": 4, "width": 16, "norm": "batch"}, train={"batch_size": 8})
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.model, data.n_in, data.n_out).model.double()
    first = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed, data.x_train.device))
    batch = data.x_train[first].double()
    with torch.no_grad():
        net.train()
        expected = net(batch)
        assert freeze_at_first_batch(net, data, cfg)  # it says so
        net.eval()
        got = net(batch)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_slope_fit_and_verdicts() -> None:
    norms = [0.5**k for k in (4, 3, 2, 1, 0)]  # ×0.5 per layer towards the input
    slope, used, left = fit_log_slope([0.0, *norms[1:]], [f"fc{i}" for i in range(1, 6)])
    assert math.isclose(slope, math.log(0.5)) and used == ["fc2", "fc3", "fc4", "fc5"]
    assert left == ["fc1"]
    assert slope_agreement(0.25, math.log(0.5), 4)["verdict"] == "agrees"
    assert slope_agreement(0.25, 3 * math.log(0.5), 4)["verdict"] == "disagrees"
    assert slope_agreement(1.0, 0.01, 4)["verdict"] == "agrees"  # both flat
    assert slope_agreement(1.0, 0.3, 4)["verdict"] == "disagrees"
    assert slope_agreement(0.0, -1.0, 4) is None


def test_theory_of_a_depth_0_model_is_a_reason_not_a_crash() -> None:
    """model.depth 0 (the head alone) is a valid config: predict_mlp used to index an empty
    list of layer norms (IndexError), which would have failed every such run."""
    out = predict_mlp({"model": {"depth": 0, "activation": "tanh"}})
    assert not out["predictable"] and "depth 0" in out["reasons"][0]
    result = predict(tiny_config(model={"depth": 0}))
    assert result["measured"]["jacobian"]["body"] is None and result["agreement"] is None


def test_a_runs_summary_report_and_figure_carry_the_prediction(run_tiny, tmp_path: Path) -> None:
    from gradlab.record.reader import read_record
    from gradlab.render.report import header
    from gradlab.render.run_figures import grad_flow_figure

    outcome = run_tiny(**SIGMOID)
    written = json.loads((outcome.path / "summary.json").read_text())
    expected = predict_mlp(resolved(tiny_config(**SIGMOID)))
    assert written["prediction"] == json.loads(json.dumps(expected))
    assert written["prediction"]["phase"] == "ordered"
    from gradlab.analyse.expect import check

    claims = {"prediction.phase": "ordered", "prediction.chi1": {"max": 0.1}}
    tiny_config(**SIGMOID, expect=claims)  # `expect:` accepts the field
    assert all(e.ok for e in check(claims, written))
    record = read_record(outcome.path)
    agreement = run_agreement(record.summary or {})
    assert agreement is not None and agreement["verdict"] != "disagrees"
    from rich.console import Console

    console = Console(width=100, record=True)
    console.print(header(record))
    text = console.export_text()
    assert "theory: ordered phase, χ₁" in text and "measured ‖∂L/∂z‖ at init ×" in text
    assert "→ ‖∂L/∂z‖ first/last" in text  # δ₁/δ_L, not the weight gradients' grad ratio
    # a record from before delta_norm: the line is the weight gradients', said so
    old = dataclasses.replace(record, summary={**record.summary, "layers": [
        {**r, "init": {k: v for k, v in r["init"].items() if k != "delta_norm"}}
        for r in record.summary["layers"]]})
    assert theory_lines(old.summary)[1].startswith("measured ‖∂L/∂W‖ at init ×")
    fig = grad_flow_figure(record)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert f"mean-field prediction (χ₁ = {expected['chi1']:.3g})" in labels
    assert any(t.get_text().startswith("mean-field prediction")
               for t in fig.axes[0].get_legend().get_texts())


def test_no_prediction_line_without_a_prediction(run_tiny) -> None:
    from gradlab.record.reader import read_record
    from gradlab.render.run_figures import grad_flow_figure

    outcome = run_tiny(model={"norm": "layer"})
    assert outcome.summary["prediction"]["predictable"] is False
    labels = [line.get_label() for line in grad_flow_figure(read_record(outcome.path)).axes[0].get_lines()]
    assert not any(label.startswith("mean-field") for label in labels)


def test_chaotic_relu_deltas_follow_the_theory_while_weight_gradients_stay_flat() -> None:
    """σw² = 4 > 2: ‖∂L/∂z‖ grows ×√χ₁ = √2 per layer backwards, and the forward activations
    grow by as much, so ‖∂L/∂W_l‖ = ‖δ_l h_{l−1}ᵀ‖ is flat: the panel says both."""
    cfg = tiny_config(data={"n_features": 64}, model={
        "depth": 12, "width": 64, "activation": "relu", "init": {"scheme": "normal", "std": 0.25}})
    result = predict(cfg)
    assert result["theory"]["phase"] == "chaotic" and math.isclose(result["theory"]["chi1"], 2.0)
    agreement = result["agreement"]
    assert agreement["delta_verdict"] == "agrees" and agreement["verdict"] == "disagrees"
    # the sentence leads with what χ₁ is about, and says why the weight gradients differ
    sentence = agreement["sentence"]
    assert sentence.startswith("per layer towards the input, ‖∂L/∂z‖ changes ×")
    lead, _, rest = sentence.partition("; the weight gradients ‖∂L/∂W‖")
    assert lead.split(": ")[-1].startswith("agrees") and rest.split(": ")[1].startswith("disagrees")


def test_predict_says_where_the_runs_step_0_differs_from_its_float32_measurement() -> None:
    plain = predict(tiny_config())["measured"]["notes"]
    assert plain == []
    fp16 = predict(tiny_config(train={"precision": "fp16"}))["measured"]["notes"]
    assert fp16 and fp16[0].startswith("in float32: the run computes in fp16")


def test_the_header_names_the_layers_its_fit_left_out() -> None:
    """fp16 zeroes the first layers' gradients: the fit over the rest is said to leave them out."""
    prediction = {"predictable": True, "chi1": 0.25, "depth": 4, "phase": "ordered",
                  "depth_scale": 0.72, "predicted_grad_ratio": 0.125}
    deltas, grads = [0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.4, 0.9]  # ×0.5 per layer where measured
    layers = [{"name": f"fc{i + 1}", "init": {"delta_norm": d, "grad_norm": g}}
              for i, (d, g) in enumerate(zip(deltas, grads))] + [{"name": "head", "init": {}}]
    agreement = run_agreement({"prediction": prediction, "layers": layers})
    assert agreement is not None and agreement["left_out"] == ["fc1", "fc2"]
    assert math.isclose(agreement["delta_factor"], 0.5)
    line = theory_lines({"prediction": prediction, "layers": layers})[1]
    assert line.endswith("; fc1, fc2 left out (0 or not finite)")
    whole = [{**r, "init": {"delta_norm": 0.5 ** (3 - i), "grad_norm": 1.0}} if i < 4 else r
             for i, r in enumerate(layers)]
    assert "left out" not in theory_lines({"prediction": prediction, "layers": whole})[1]
    # the count is the headline fit's: deltas over 2 layers, weights over all 4
    split = [{**r, "init": {**r["init"], "grad_norm": 1.0}} if i < 4 else r
             for i, r in enumerate(layers)]
    both = run_agreement({"prediction": prediction, "layers": split})
    assert both is not None and both["left_out"] == ["fc1", "fc2"]
    assert "‖∂L/∂z‖ changes ×0.5 (fit over 2 hidden layers)" in both["sentence"]


def test_a_config_with_seeds_is_measured_as_its_first_seeds_run() -> None:
    group = predict(tiny_config(seeds=[3, 4]))
    alone = predict(tiny_config(seed=3))
    assert [r["grad_norm"] for r in group["measured"]["layers"]] == [
        r["grad_norm"] for r in alone["measured"]["layers"]]
    assert group["measured"]["notes"] == ["seed 3, the first of the config's seeds 3, 4"]
    other = predict(tiny_config(seed=0))
    assert [r["grad_norm"] for r in other["measured"]["layers"]] != [
        r["grad_norm"] for r in alone["measured"]["layers"]]  # the premise: seeds differ
