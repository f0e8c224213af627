"""The shipped configs: every file in configs/ validates, names itself, cites its claim and checks it."""

from pathlib import Path

import pytest

from gradlab.config import load_config
from gradlab.config.load import config_paths

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = config_paths([CONFIGS])

# The claims issue #3 asks `make reproduce` to check; each needs its own config.
CANONICAL = {
    "deep_sigmoid", "deep_tanh", "deep_relu", "deep_relu_he", "deep_leaky_relu", "deep_elu",
    "deep_prelu", "init_constant", "init_xavier_tanh", "init_he_relu", "init_large",
    "deep_sigmoid_bn", "deep_relu_bn", "deep_residual", "explode_lr", "clip_norm",
    "clip_value", "clip_demo", "optim_sgd", "optim_adam", "optim_rmsprop", "lr_decay", "l2",
    "l2_off", "digits_sigmoid_deep", "digits_relu_he_deep",
}


def test_every_canonical_claim_has_a_config():
    assert CANONICAL <= {p.stem for p in SHIPPED}, CANONICAL - {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_validates_and_checks_a_claim(path: Path):
    cfg = load_config(path)  # raises ConfigError, with every problem, if it does not validate
    assert cfg.name == path.stem, "runs/<name>/ must match the file make reproduce runs"
    assert cfg.expect, f"{path.name}: an empty expect: block checks nothing"
    assert "status" in cfg.expect, f"{path.name}: say whether the run completes or diverges"
    assert path.read_text(encoding="utf-8").startswith("#"), (
        f"{path.name}: open with a comment citing the claim's source and what it shows")


def test_contrasts_between_runs_are_ranges_that_do_not_overlap():
    """Claims about two runs are absolute ranges on each; they must not overlap."""
    pairs = [("l2", "l2_off", "weight_norm_final"), ("optim_adam", "optim_sgd", "final_loss"),
             ("optim_rmsprop", "optim_sgd", "final_loss"),
             ("lr_decay", "l2_off", "layers.0.final.update_ratio"),
             ("init_xavier_tanh", "init_constant", "final_loss"),
             ("digits_sigmoid_deep", "digits_relu_he_deep", "final_metrics.test_accuracy")]
    for low, high, key in pairs:
        below = load_config(CONFIGS / f"{low}.yaml").expect[key]["max"]
        above = load_config(CONFIGS / f"{high}.yaml").expect[key]["min"]
        assert below < above, f"{low} ≤ {below} and {high} ≥ {above} overlap on {key}"
