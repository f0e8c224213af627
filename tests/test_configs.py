"""The shipped configs: every file in configs/ validates, names itself, cites its claim, checks
it, and every remedy is paired with its problem on the same data and budget."""

from pathlib import Path

import pytest

from gradlab.config import load_config
from gradlab.config.load import config_paths

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = config_paths([CONFIGS])
BY_NAME = {p.stem: load_config(p) for p in SHIPPED}

# The problem/remedy claims `make reproduce` demonstrates (issue #14): at least one paired
# config for each, named by a prefix that a directory listing groups.
CLAIMS = {
    "the ReLU family with fitting init against sigmoid/tanh depth": "deep_",
    "initialisation": "init_",
    "gradient clipping": "clip_",
    "gated recurrent cells through time": ("lstm_", "gru_"),
    "learning-rate decay": "lr_",
    "adaptive optimisers": "optim_",
    "L2 regularisation": "l2",
    "layer-wise pretraining": "pretrain_",
    "a lower learning rate against one that explodes": "explode_",
    "batch normalisation": ("deep_sigmoid_bn", "deep_relu_bn"),
    "residual connections": ("deep_residual", "deep_sigmoid_res"),
    "a loss scale against fp16 underflow": "precision_",
}


def partners(name: str) -> list[str]:
    versus = BY_NAME[name].expect.get("versus")
    specs = [versus] if isinstance(versus, dict) else (versus or [])
    return [s["partner"] for s in specs]


def partner(name: str) -> str | None:
    return (partners(name) or [None])[0]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_validates_and_checks_a_claim(path: Path):
    cfg = BY_NAME[path.stem]
    assert cfg.name == path.stem, "runs/<name>/ must match the file make reproduce runs"
    assert cfg.expect, f"{path.name}: an empty expect: block checks nothing"
    assert "status" in cfg.expect, f"{path.name}: say whether the run completes or diverges"
    assert path.read_text(encoding="utf-8").startswith("#"), (
        f"{path.name}: open with a comment citing the claim's source and what it shows")


def test_the_headline_pair_is_paired():
    assert partner("deep_relu_he") == "deep_sigmoid"
    versus = BY_NAME["deep_relu_he"].expect["versus"]
    assert "final_loss" in versus or "final_metrics.test_accuracy" in versus, (
        "the Quick start's pair must differ in what the nets learn, not only in gradients")


@pytest.mark.parametrize("claim", CLAIMS)
def test_every_claim_has_a_paired_remedy(claim):
    prefixes = CLAIMS[claim]
    prefixes = prefixes if isinstance(prefixes, tuple) else (prefixes,)
    paired = [n for n in BY_NAME if n.startswith(prefixes) and partner(n)]
    assert paired, f"no config demonstrates {claim} against a problem"


PAIRS = [(n, p) for n in BY_NAME for p in partners(n)]


@pytest.mark.parametrize("name,other", PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
def test_a_pair_runs_on_the_same_data_and_budget(name, other):
    mine, theirs = BY_NAME[name], BY_NAME.get(other)
    assert theirs is not None, f"{name}: partner {other} is not in configs/"
    assert mine.data == theirs.data, f"{name} and {theirs.name} train on different data"
    assert (mine.train.steps, mine.train.epochs, mine.train.batch_size) == (
        theirs.train.steps, theirs.train.epochs, theirs.train.batch_size), (
        f"{name} and {theirs.name} have different budgets")
    versus = mine.expect["versus"]
    [spec] = [v for v in ([versus] if isinstance(versus, dict) else versus)
              if v["partner"] == other]
    claims = {k for k in spec if k != "partner"}
    assert any("ratio" in k or "norm" in k or "clip" in k or "status" in k
               or "spread" in k or "gap" in k for k in claims | set(mine.expect)), (
        f"{name}: show the mechanism in the gradient statistics too")


def test_breaking_the_headline_pair_fails_make_reproduce_with_the_paired_message(tmp_path,
                                                                                monkeypatch):
    """The remedy given the problem's activation and init: its paired claim fails, naming the
    partner, the seed and both values. The shipped pair and its claims as they are, to be quick
    with one seed (make reproduce runs 0, 1, 2) and 100 of the 500 steps for both (the broken
    remedy is deep_sigmoid's own net, so the pair's losses are equal at any length)."""
    import yaml
    from typer.testing import CliRunner

    from gradlab.cli import app

    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    pair = tmp_path / "configs"
    pair.mkdir()
    (pair / "deep_sigmoid.yaml").write_text((CONFIGS / "deep_sigmoid.yaml").read_text())
    remedy = yaml.safe_load((CONFIGS / "deep_relu_he.yaml").read_text())
    remedy["model"].update(activation="sigmoid", init="default")
    (pair / "deep_relu_he.yaml").write_text(yaml.safe_dump(remedy, sort_keys=False))
    result = CliRunner().invoke(app, ["compare", str(pair), "--seeds", "1", "--check",
                                      "--set", "train.steps=100",
                                      "--no-plots", "--out", str(tmp_path / "runs")],
                                env={"COLUMNS": "100"})
    assert result.exit_code == 1, result.output
    assert "deep_relu_he: versus deep_sigmoid: final_loss: expected ≥ 2 below the partner's" \
        in result.output
    assert "(seed 0)" in result.output
