"""The memory budget: `count_parameters` (built on `meta`) against the real CPU model and a hand
formula, optimiser state in `memory_estimate`, and `memory_problems` for a model that cannot fit.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import merge, tiny_config

from gradlab.build import budget
from gradlab.build.budget import count_parameters, memory_estimate, memory_problems
from gradlab.build.model import build_model
from gradlab.config import config_from_dict

SEQUENCE: dict[str, Any] = {
    "name": "seq", "seed": 0, "device": "cpu",
    "data": {"kind": "adding", "n_samples": 64, "length": 5},
    "model": {"kind": "rnn", "depth": 1, "width": 8, "readout": "last"},
    "train": {"steps": 10, "batch_size": 16},
}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def hand_count(model: dict[str, Any], n_in: int, n_out: int) -> int:
    """Parameters written out by kind: Linear W + b per layer, 2 per unit for a norm, one PReLU
    slope per layer; an RNN-family layer has gates × (W_ih, W_hh, b_ih, b_hh)."""
    kind, depth, w = model.get("kind", "mlp"), model["depth"], model["width"]
    head = w * n_out + n_out
    if kind == "mlp":
        total = (n_in * w + w) + (depth - 1) * (w * w + w) + head
        if model.get("norm", "none") != "none":
            total += 2 * w * depth
        if model.get("activation") == "prelu":
            total += depth
        return total
    g = GATES[kind]
    return sum(g * w * ((n_in if i == 0 else w) + w) + 2 * g * w for i in range(depth)) + head


MLP_CASES: dict[str, dict[str, Any]] = {
    "plain": {"depth": 4, "width": 16},
    "depth1": {"depth": 1, "width": 5},
    "batch": {"depth": 3, "width": 12, "norm": "batch"},
    "layer": {"depth": 3, "width": 12, "norm": "layer"},
    "residual": {"depth": 5, "width": 10, "residual": True, "residual_block": 2},
    "residual_batch": {"depth": 5, "width": 10, "residual": True, "norm": "batch"},
    "prelu": {"depth": 4, "width": 9, "activation": "prelu"},
    "prelu_layer": {"depth": 3, "width": 9, "activation": "prelu", "norm": "layer"},
    "tanh": {"depth": 3, "width": 7, "activation": "tanh"},
    "leaky_relu": {"depth": 3, "width": 7, "activation": "leaky_relu"},
    "orthogonal": {"depth": 3, "width": 7, "init": "orthogonal"},
}
SEQ_CASES: dict[str, dict[str, Any]] = {f"{kind}_depth{d}": {"kind": kind, "depth": d, "width": 8}
             for kind in ("rnn", "lstm", "gru") for d in (1, 2)}
SEQ_CASES["lstm_forget_bias"] = {"kind": "lstm", "depth": 2, "width": 6, "forget_bias": 1.0,
                                 "recurrent_init": "orthogonal"}


def config_for(model: dict[str, Any]) -> Any:
    if model.get("kind", "mlp") == "mlp":
        return tiny_config(model=model)
    return config_from_dict(merge(SEQUENCE, {"model": model}), "seq.yaml")


@pytest.mark.parametrize("model", [*MLP_CASES.values(), *SEQ_CASES.values()],
                         ids=[*MLP_CASES, *SEQ_CASES])
def test_count_parameters_is_the_real_models(model: dict[str, Any]) -> None:
    cfg = config_for(model)
    n_in, n_out = (8, 3) if cfg.model.kind == "mlp" else (2, 1)
    real = build_model(cfg.model, n_in, n_out).model
    assert all(p.device.type == "cpu" for p in real.parameters())
    assert count_parameters(cfg, n_in, n_out) == sum(p.numel() for p in real.parameters())
    assert count_parameters(cfg, n_in, n_out) == hand_count(model, n_in, n_out)


def slots_bytes(**train: Any) -> int:
    cfg = tiny_config(train=train)
    return memory_estimate(cfg)["parameters"]


def test_memory_estimate_counts_optimiser_state() -> None:
    n = hand_count({"depth": 4, "width": 16}, 8, 1)  # TINY: teacher data, 8 features, 1 output
    # float32 weights, gradients and a probe copy, plus the optimiser's state slots per parameter
    expected = {"sgd": 3, "sgd_momentum": 4, "adam": 5, "adamw": 5, "rmsprop": 4,
                "rmsprop_momentum": 5, "adagrad": 4}
    got = {
        "sgd": slots_bytes(optimizer="sgd"),
        "sgd_momentum": slots_bytes(optimizer="sgd", momentum=0.9),
        "adam": slots_bytes(optimizer="adam"),
        "adamw": slots_bytes(optimizer="adamw"),
        "rmsprop": slots_bytes(optimizer="rmsprop"),
        "rmsprop_momentum": slots_bytes(optimizer="rmsprop", momentum=0.5),
        "adagrad": slots_bytes(optimizer="adagrad"),
    }
    assert got == {k: 4 * n * v for k, v in expected.items()}
    assert got["adam"] > got["sgd_momentum"] > got["sgd"]


def test_memory_estimate_parts() -> None:
    est = memory_estimate(tiny_config())
    assert est["n_params"] == hand_count({"depth": 4, "width": 16}, 8, 1)
    assert est["activations"] == 4 * 16 * 4 * 16 * 4  # float32 · batch · depth · width · 4
    assert est["data"] == 12 * 64 * (8 + 1)


def test_memory_problems_name_the_model_and_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "available_memory", lambda: 8 * 1024 ** 3)
    depth, width = 2000, 1_000_000
    cfg = tiny_config(model={"depth": depth, "width": width})
    problems = memory_problems(cfg)
    n = 8 * width + width + (depth - 1) * (width * width + width) + width + 1
    need = 4 * n * 3 + 4 * 16 * depth * width * 4 + 12 * 64 * 9  # sgd: no optimiser state
    assert [key for key, _ in problems] == ["model"]
    msg = problems[0][1]
    assert f"width {width} × depth {depth}" in msg
    assert f"needs about {need / 1024 ** 5:.3g} PiB" in msg
    assert "8 GiB available" in msg and "lower model.width or model.depth" in msg


def test_no_problem_when_it_fits_or_memory_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config()
    assert hand_count({"depth": 4, "width": 16}, 8, 1) == 977
    need = 4 * 977 * 3 + 4 * 16 * 4 * 16 * 4 + 12 * 64 * 9  # parameters, activations, data
    monkeypatch.setattr(budget, "available_memory", lambda: need)
    assert memory_problems(cfg) == []
    monkeypatch.setattr(budget, "available_memory", lambda: need - 1)
    assert [key for key, _ in memory_problems(cfg)] == ["model"]
    monkeypatch.setattr(budget, "available_memory", lambda: None)
    assert memory_problems(cfg) == []


def test_a_cgroup_limit_caps_the_memory_available(tmp_path) -> None:
    from gradlab.build.budget import cgroup_headroom

    (tmp_path / "memory.max").write_text("1073741824\n")  # cgroup v2: 1 GiB
    (tmp_path / "memory.current").write_text("268435456\n")
    assert cgroup_headroom(tmp_path) == 3 << 28  # 768 MiB left
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_headroom(tmp_path) is None  # unlimited
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(512 << 20))
    (v1 / "memory.usage_in_bytes").write_text(str(128 << 20))
    assert cgroup_headroom(tmp_path / "v1") == 384 << 20
    assert cgroup_headroom(tmp_path / "none") is None


def test_the_budget_counts_the_evaluation_of_a_large_split() -> None:
    from conftest import tiny_config

    from gradlab.build.budget import memory_estimate

    cfg = tiny_config(data={"kind": "teacher", "n_samples": 100_000, "n_features": 8},
                      model={"depth": 4, "width": 4096}, train={"batch_size": 2})
    est = memory_estimate(cfg)
    assert est["evaluation"] == 4 * 4096 * (2 * 4096 + 1)  # a 4096-example chunk, two layers
    assert est["evaluation"] > est["activations"]  # here evaluation, not the batch, dominates


BOUND_CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    **{name: (m, 8, 3) for name, m in MLP_CASES.items()},
    **{name: (m, 2, 1) for name, m in SEQ_CASES.items()},
    "linear": ({"depth": 0, "width": 16}, 8, 3),
    "wide_inputs": ({"depth": 2, "width": 4, "norm": "batch", "activation": "prelu"}, 500, 3),
    "many_outputs": ({"depth": 2, "width": 4, "residual": True}, 3, 300),
    "lstm_wide_inputs": ({"kind": "lstm", "depth": 3, "width": 4}, 90, 2),
}


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_the_bound_is_never_below_the_built_models_count(case: str) -> None:
    model, n_in, n_out = BOUND_CASES[case]
    cfg = config_for(model)
    exact = count_parameters(cfg, n_in, n_out)
    bound = budget.parameters_bound(cfg, n_in, n_out)
    assert bound is not None and exact <= bound <= 2 * exact, (exact, bound)


def test_the_bound_holds_for_every_canonical_config() -> None:
    from conftest import CONFIGS

    from gradlab.config import load_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        n_in, n_out, _ = budget.io_sizes(cfg.data)
        assert count_parameters(cfg, n_in, n_out) <= budget.parameters_bound(cfg, n_in, n_out), path


def test_a_run_that_fits_even_at_the_bound_builds_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any) -> int:
        raise AssertionError("the model was built although the bound fits")

    monkeypatch.setattr(budget, "count_parameters", never)
    monkeypatch.setattr(budget, "available_memory", lambda: 8 * 1024 ** 3)
    assert memory_problems(tiny_config()) == []


def test_planning_a_comparison_imports_no_torch(tmp_path) -> None:
    """`compare`'s parent only plans and waits (its workers train): loading and pre-flighting a
    config that fits takes no torch, two seconds less before the first run starts."""
    import subprocess
    import sys

    from conftest import CONFIGS

    code = ("import sys; import gradlab.compare; from gradlab.config import load_config; "
            "from gradlab.build.budget import preflight; "
            f"preflight(load_config({str(CONFIGS / 'deep_sigmoid.yaml')!r}), 'x'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
