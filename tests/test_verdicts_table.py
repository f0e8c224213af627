"""Recorded summaries → verdicts: a table of hand-built summaries and resolved configs, one row
per case a verdict must call right (the hard cases included), then messages and remedies.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from gradlab.analyse.verdicts import diagnose

HEALTHY = {"grad_norm": 0.5, "act_std": 0.6, "act_saturated": 0.05, "act_dead": 0.0}


def mlp_layers(n: int = 4, init: dict[int, dict[str, Any]] | None = None,
               final: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """fc1..fcn with healthy stats (changed per 0-based layer index), then a head with only a
    gradient norm; index n changes the head."""
    init, final = init or {}, final or {}
    layers = []
    for i in range(n + 1):
        base = dict(HEALTHY) if i < n else {"grad_norm": 0.8}
        layers.append({"name": f"fc{i + 1}" if i < n else "head",
                       "init": {**base, **init.get(i, {})}, "final": {**base, **final.get(i, {})}})
    return layers


def every(n: int = 4, **stats: Any) -> dict[int, dict[str, Any]]:
    return {i: dict(stats) for i in range(n)}


def summary(status: str = "completed", ratio_init: float | None = 0.5,
            ratio_final: float | None = 0.7, layers: list[dict[str, Any]] | None = None,
            test_loss: float = 0.2, baseline: float = 1.0, **extra: Any) -> dict[str, Any]:
    """A regression run: it learned (test loss 0.2 against a baseline of 1) unless told."""
    return {"status": status, "grad_ratio_init": ratio_init, "grad_ratio_final": ratio_final,
            "layers": mlp_layers() if layers is None else layers, "first_nonfinite": None,
            "final_metrics": {"test_loss": test_loss}, "baseline_loss": baseline,
            "initial_loss": 1.0, **extra}


def classified(accuracy: float, chance: float = 0.1, **extra: Any) -> dict[str, Any]:
    s = summary(**extra)
    s["final_metrics"] = {"test_loss": 2.3, "test_accuracy": accuracy}
    s["baseline_loss"], s["baseline_accuracy"] = 2.3, chance
    return s


def fitted(s: dict[str, Any], train_loss: float) -> dict[str, Any]:
    """The same run with its final training loss on the record."""
    return {**s, "final_metrics": {**s["final_metrics"], "train_loss": train_loss}}


def config(**model: Any) -> dict[str, Any]:
    base = {"kind": "mlp", "activation": "tanh", "norm": "none", "residual": False,
            "init": {"scheme": "default"}, "recurrent_init": {"scheme": "default"},
            "rnn_nonlinearity": "tanh", "forget_bias": None}
    train = model.pop("train", {})
    return {"model": {**base, **model},
            "train": {"lr": 0.01, "optimizer": "sgd", "clip": None, **train}, "pretrain": None}


TANH, RELU = config(), config(activation="relu", init={"scheme": "kaiming_normal"})
XAVIER_RELU = config(activation="relu", init={"scheme": "xavier_normal"})
RELU_BN = config(activation="relu", norm="batch", init={"scheme": "kaiming_normal"})
RESIDUAL = config(activation="relu", residual=True, init={"scheme": "kaiming_normal"})
LSTM = config(kind="lstm", forget_bias=1.0)
ELU = config(activation="elu", init={"scheme": "kaiming_normal"})
NOT_LEARNING = {"test_loss": 0.98}
THROUGH_TIME = {"time_grad_ratio_init": 9e-6, "time_grad_ratio_final": 0.08}

# (id, summary, resolved config, verdict kinds in the order diagnose gives them)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("ok", summary(), TANH, ["ok"]),
    ("ok_relu", summary(), RELU, ["ok"]),
    ("failed", summary("failed", error="RuntimeError: boom"), TANH, ["failed"]),
    # the learning verdict: gradients fine, loss at the baseline (init_constant, deep_relu_he)
    ("not_learning_with_healthy_gradients", summary(**NOT_LEARNING), RELU, ["not_learning"]),
    ("not_learning_at_chance", classified(0.08), RELU, ["not_learning"]),
    ("learning_above_chance", classified(0.9), RELU, ["ok"]),
    # the training set fitted, the test split not (l2_off): memorised, not "not learning",
    # and dead units are not its cause
    ("memorised_the_training_set", fitted(summary(**NOT_LEARNING), 0.01), RELU, ["overfitting"]),
    ("memorised_classes", fitted(classified(0.1), 0.05), RELU, ["overfitting"]),
    ("memorised_with_dead_units",
     fitted(summary(layers=mlp_layers(final={1: {"act_dead": 0.7}}), **NOT_LEARNING), 0.01),
     RELU, ["overfitting", "dead"]),
    ("fitted_only_halfway", fitted(summary(**NOT_LEARNING), 0.6), RELU, ["not_learning"]),
    ("learned_with_a_gap", fitted(summary(), 0.001), RELU, ["ok"]),
    # hard case: ReLU + Xavier, weight-gradient ratio near 1, forward signal collapsing, chance
    ("relu_xavier_forward_collapse",
     classified(0.08, layers=mlp_layers(init={0: {"act_std": 1.0}, 1: {"act_std": 0.1},
                                              2: {"act_std": 0.02}, 3: {"act_std": 1e-3}})),
     XAVIER_RELU, ["forward_signal", "not_learning"]),
    # vanishing at init, recovered by the end (optim_adam): info, not a warning
    ("vanishing_recovered", summary(ratio_init=2.3e-4, ratio_final=14.0), TANH,
     ["ok", "vanishing"]),
    ("vanishing_throughout_not_learning", summary(ratio_init=1e-9, ratio_final=1e-8,
                                                  **NOT_LEARNING), TANH,
     ["vanishing", "not_learning"]),
    ("vanishing_exactly_zero", summary(ratio_init=0.0, ratio_final=0.0, **NOT_LEARNING), TANH,
     ["vanishing", "not_learning"]),
    # hard case: deep ReLU + BN, gradients growing toward the input at init: exploding, not
    # vanishing, and "at init" since it ends at 0.65
    ("relu_bn_exploding_at_init", summary(ratio_init=2.6e4, ratio_final=0.65), RELU_BN,
     ["ok", "exploding"]),
    ("relu_bn_exploding_not_learning", summary(ratio_init=2.6e4, ratio_final=0.65,
                                               **NOT_LEARNING), RELU_BN,
     ["not_learning", "exploding"]),  # exploding only at init: information, not the cause
    # every logged step counts, not just the first and last
    ("exploding_at_its_worst_step",
     summary(over_run={"grad_norm_max": {"value": 4.1e16, "step": 3, "layer": "fc1"}},
             **NOT_LEARNING), RELU, ["exploding", "not_learning"]),
    # hard case: recurrent nets
    ("lstm_that_solved_its_task", summary(**THROUGH_TIME), LSTM, ["ok", "vanishing_time"]),
    ("lstm_that_did_not_learn", summary(**THROUGH_TIME, **NOT_LEARNING), LSTM,
     ["vanishing_time", "not_learning"]),
    # units: non-ReLU units are never dead; dead layers named though the average is low
    ("elu_is_never_dead", summary(layers=mlp_layers(final=every(act_dead=None))), ELU, ["ok"]),
    ("two_dead_layers_of_eight",
     summary(layers=mlp_layers(8, final={2: {"act_dead": 0.7}, 5: {"act_dead": 0.6}}),
             **NOT_LEARNING), RELU, ["dead", "not_learning"]),
    ("one_saturated_layer", summary(layers=mlp_layers(final={3: {"act_saturated": 0.9}}),
                                    **NOT_LEARNING), TANH, ["saturated", "not_learning"]),
    # divergence: by the learning rate, or by a network that explodes before any update
    ("diverged_later", summary("diverged", first_nonfinite={"step": 7, "layer": "fc2",
                                                            "what": "gradient",
                                                            "direction": "backward"}),
     RELU, ["diverged"]),
    ("forward_overflow_at_init",
     summary("diverged", initial_loss=3e9, first_nonfinite={"step": 1, "layer": "fc40",
                                                            "what": "output",
                                                            "direction": "forward"}),
     RESIDUAL, ["diverged"]),
]


@pytest.mark.parametrize(("summ", "cfg", "kinds"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_verdict_kinds(summ: dict[str, Any], cfg: dict[str, Any], kinds: list[str]) -> None:
    before = copy.deepcopy((summ, cfg))
    verdicts = diagnose(summ, cfg)
    assert [v["kind"] for v in verdicts] == kinds
    assert (summ, cfg) == before  # diagnose reads, never writes
    for v in verdicts:
        assert set(v) == {"kind", "severity", "when", "layers", "message", "remedies", "fixes"}
        assert v["severity"] in ("error", "warning", "info")
        assert all(isinstance(f["set"], list) and f["set"] and f["why"] for f in v["fixes"])


def by_kind(summ: dict[str, Any], cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["kind"]: v for v in diagnose(summ, cfg)}


def test_only_the_unlearned_cases_warn() -> None:
    learned = by_kind(summary(ratio_init=2.6e4, ratio_final=0.65), RELU_BN)
    assert learned["exploding"]["severity"] == "info" and learned["exploding"]["when"] == "init"
    assert "by the end the ratio is 0.65" in learned["exploding"]["message"]
    stuck = by_kind(summary(ratio_init=2.6e4, ratio_final=0.65, **NOT_LEARNING), RELU_BN)
    assert stuck["not_learning"]["severity"] == "warning"
    assert "test loss 0.98 against the baseline's 1" in stuck["not_learning"]["message"]


def test_overfitting_says_what_was_fitted_and_offers_weight_decay_once() -> None:
    v = by_kind(fitted(summary(**NOT_LEARNING), 0.0123), RELU)["overfitting"]
    assert v["severity"] == "warning" and v["when"] == "end"
    assert ("the training loss fell to 0.0123 but its test loss 0.98 is no better than the "
            "baseline's 1") in v["message"]
    assert [f["set"] for f in v["fixes"]] == [["train.weight_decay=0.1"]]
    assert "more training data" in v["remedies"]
    decayed = config(activation="relu", init={"scheme": "kaiming_normal"},
                     train={"weight_decay": 0.2})
    assert by_kind(fitted(summary(**NOT_LEARNING), 0.0123), decayed)["overfitting"]["fixes"] == []
    chance = by_kind(fitted(classified(0.1), 0.05), RELU)["overfitting"]
    assert ("its test accuracy 10% is short of the 28% that counts as learning (chance 10%)"
            in chance["message"])
    above = by_kind(fitted(classified(0.27), 0.05), RELU)["overfitting"]  # above chance, not near
    assert "its test accuracy 27% is short of the 28%" in above["message"]
    assert "overfitting" not in by_kind(fitted(classified(0.29), 0.05), RELU)


def test_the_smallest_ratio_qualifies_the_ratio_and_orders_are_counted_right() -> None:
    v = by_kind(summary(ratio_init=0.292, ratio_final=5e-4, delta_ratio_init=4.6e-6,
                        over_run={"grad_ratio": {"min": 6.1e-5, "min_step": 40}},
                        **NOT_LEARNING), TANH)["vanishing"]["message"]
    # the weight gradients' low point sits beside their ratio, not after ‖∂L/∂z‖'s
    assert "and 5.0e-04 × at the end (smallest 6.1e-05, at step 40); the backward signal " \
           "‖∂L/∂z‖ falls 4.6e-06 × towards the input" in v
    assert "0.292 × the last layer's at init and" in v  # half an order is no "1 orders"
    one = by_kind(summary(ratio_init=0.05, ratio_final=5e-4, **NOT_LEARNING), TANH)
    assert "0.05 × the last layer's at init (1 order of magnitude)" in \
        one["vanishing"]["message"]


def test_messages_carry_their_numbers_and_say_when() -> None:
    v = by_kind(summary(ratio_init=2.3e-4, ratio_final=14.0), TANH)["vanishing"]
    assert v["when"] == "init" and "training recovered (ratio 14 at the end)" in v["message"]
    assert "is 2.3e-04 × the last layer's at init (4 orders of magnitude)" in v["message"]
    zero = by_kind(summary(ratio_init=0.0, ratio_final=0.0, delta_ratio_init=0.0,
                           **NOT_LEARNING), TANH)["vanishing"]["message"]
    assert "the first layer's gradient is exactly 0 at init (every entry) and at the end" in zero
    assert "‖∂L/∂z‖ is exactly 0 at the input" in zero and "0 ×" not in zero
    worst = by_kind(summary(over_run={"grad_norm_max": {"value": 4.1e16, "step": 3,
                                                        "layer": "fc1"}}, **NOT_LEARNING),
                    RELU)["exploding"]
    assert worst["when"] == "step 3" and "fc1's gradient norm reaches 4.1e+16 at step 3" in \
        worst["message"]
    dead = by_kind(summary(layers=mlp_layers(8, final={2: {"act_dead": 0.7},
                                                      5: {"act_dead": 0.6}}), **NOT_LEARNING),
                   RELU)["dead"]
    assert dead["layers"] == ["fc3", "fc6"] and "in 2 of 8 hidden layers" in dead["message"]


def test_the_lstm_that_did_not_learn_is_not_told_a_path_opened() -> None:
    v = by_kind(summary(**THROUGH_TIME, **NOT_LEARNING), LSTM)["vanishing_time"]
    assert v["severity"] == "warning" and "path" not in v["message"]
    solved = by_kind(summary(**THROUGH_TIME), LSTM)["vanishing_time"]
    assert solved["severity"] == "info" and "learned all the same" in solved["message"]


def test_a_forward_overflow_at_init_gets_init_remedies_not_the_learning_rate() -> None:
    v = by_kind(summary("diverged", initial_loss=3e9,
                        first_nonfinite={"step": 1, "layer": "fc40", "what": "output",
                                         "direction": "forward"}), RESIDUAL)["diverged"]
    assert "the forward pass already explodes at init (initial loss 3.0e+09" in v["message"]
    settings = [s for f in v["fixes"] for s in f["set"]]
    assert "model.residual_init=zero" in settings
    assert not any(s.startswith("train.lr") for s in settings)
    later = by_kind(summary("diverged", first_nonfinite={"step": 7, "layer": "fc2",
                                                         "what": "gradient"}), RELU)["diverged"]
    assert later["fixes"][0]["set"] == ["train.lr=0.001"]


def test_remedies_come_as_runnable_overrides_and_skip_what_is_in_place() -> None:
    v = by_kind(summary(ratio_init=1e-9, ratio_final=1e-8, **NOT_LEARNING), TANH)["vanishing"]
    assert v["fixes"][0]["set"] == ["model.norm=batch"]  # what fixes a deep sigmoid/tanh net
    adam = next(f for f in v["fixes"] if "train.optimizer=adam" in f["set"])
    assert "train.lr=0.001" in adam["set"]  # Adam with a rate suited to it
    residual = next(f for f in v["fixes"] if "model.residual=true" in f["set"])
    assert "model.residual_style=pre" in residual["set"]
    assert v["remedies"][0] == ("--set model.norm=batch  (normalising each layer's "
                                "pre-activations keeps the units out of their flat tails)")
    with_bn = config(norm="batch")
    v = by_kind(summary(ratio_init=1e-9, ratio_final=1e-8, **NOT_LEARNING), with_bn)["vanishing"]
    assert ["model.norm=batch"] not in [f["set"] for f in v["fixes"]]
    # a run on Adam already (at another rate) is not offered Adam: its reason would not hold
    on_adam = config(train={"optimizer": "adam", "lr": 0.005})
    v = by_kind(summary(ratio_init=1e-9, ratio_final=1e-8, **NOT_LEARNING), on_adam)["vanishing"]
    assert v["fixes"] and not any("train.optimizer=adam" in f["set"] for f in v["fixes"])


def test_a_mapping_is_in_place_only_if_the_setting_would_leave_it_as_it_is() -> None:
    """`--set model.init=kaiming_normal` replaces the whole init: against a kaiming init of
    gain 3 it changes the net (gain back to 1), against the resolved default gain it does not."""
    exploding = summary(ratio_init=2.6e4, ratio_final=3e4, **NOT_LEARNING)

    def sets(init: dict[str, Any]) -> list[list[str]]:
        cfg = config(activation="relu", init=init)
        return [f["set"] for f in by_kind(exploding, cfg)["exploding"]["fixes"]]

    resolved = {"scheme": "kaiming_normal", "value": 0.0, "mean": 0.0, "std": 0.01, "low": -0.05,
                "high": 0.05, "gain": 1.0, "mode": "fan_in", "nonlinearity": None}
    assert ["model.init=kaiming_normal"] not in sets(resolved)
    assert ["model.init=kaiming_normal"] in sets({**resolved, "gain": 3.0})
    assert ["model.init=kaiming_normal"] in sets({"scheme": "default"})


def test_a_diverging_pretraining_names_its_phase_and_rate() -> None:
    where = {"phase": "pretrain_layer_2", "step": 3, "layer": "fc2", "what": "gradient"}
    cfg = {**TANH, "pretrain": {"lr": 0.5, "optimizer": "sgd"}}
    v = by_kind(summary("diverged", first_nonfinite=where), cfg)["diverged"]
    assert "phase pretrain_layer_2, hidden layer 2" in v["message"]
    assert v["fixes"][0]["set"] == ["pretrain.lr=0.05"]


@pytest.mark.parametrize(("summ", "cfg"), [c[1:3] for c in CASES], ids=[c[0] for c in CASES])
def test_a_watched_model_keeps_its_remedies_in_words(summ: dict[str, Any],
                                                     cfg: dict[str, Any]) -> None:
    """`gradlab.watch` rewords the remedies for a user's own model: no verdict that had some
    loses them, no `--set` fix survives, and none names a gradlab config key."""
    from gradlab.watch import custom_remedies  # torch: the rest of this file needs none

    for given, worded in zip(diagnose(summ, cfg), custom_remedies(diagnose(summ, cfg), summ),
                             strict=True):
        assert worded["kind"] == given["kind"] and worded["fixes"] == []
        if not given["kind"].endswith("_time"):  # watch records no gradients through time
            assert bool(worded["remedies"]) == bool(given["remedies"]), given["kind"]
        for remedy in worded["remedies"]:
            assert not re.search(r"--set|\b(data|model|train|pretrain|probe)\.\w+=", remedy), \
                (given["kind"], remedy)


def test_a_watched_loop_that_clips_is_not_told_to_clip() -> None:
    from gradlab.watch import custom_remedies

    s = summary(ratio_init=0.5, ratio_final=0.5, over_run={
        "grad_norm_max": {"value": 4.1e16, "step": 3, "layer": "fc1"}}, **NOT_LEARNING)
    [exploding] = [v for v in custom_remedies(diagnose(s, RELU), s) if v["kind"] == "exploding"]
    assert any(r.startswith("clip the gradient") for r in exploding["remedies"])  # the premise
    told = custom_remedies(diagnose(s, RELU), s, {"by": "norm", "max_norm": 1.0, "seen": "after"})
    [exploding] = [v for v in told if v["kind"] == "exploding"]
    assert not any(r.startswith("clip the gradient") for r in exploding["remedies"])
    assert "the loop clips already (norm 1): clip lower, or lower the learning rate" in \
        exploding["remedies"]
