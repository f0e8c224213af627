"""unit_spread: a constant init's symmetry, measured; generalisation_gap on the summary."""

import numpy as np
import pytest
import torch

from gradlab.build.probed import ProbedLayer
from gradlab.train.probe import unit_spread


def layer(w: torch.Tensor) -> ProbedLayer:
    return ProbedLayer("fc", torch.nn.Parameter(w))


def test_spread_is_the_rows_distance_from_their_mean_over_their_norm():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(30, 20)) + 0.5
    expected = np.sqrt(((w - w.mean(axis=0)) ** 2).sum(axis=1).mean()) / \
        np.sqrt((w ** 2).sum(axis=1).mean())
    head = layer(torch.zeros(1, 30))  # the read-out is left out
    assert unit_spread([layer(torch.tensor(w)), head]) == pytest.approx(expected, rel=1e-12)


def test_identical_units_have_no_spread_and_the_largest_layer_counts():
    same = torch.full((16, 8), 0.01)
    assert unit_spread([layer(same), layer(torch.zeros(1, 16))]) == 0.0
    varied = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    assert unit_spread([layer(same), layer(varied), layer(torch.zeros(1, 16))]) > 0.9
    assert unit_spread([layer(torch.zeros(1, 16))]) is None  # only a read-out


def test_a_constant_init_stays_symmetric_through_training(run_tiny):
    s = run_tiny(model={"init": {"scheme": "constant", "value": 0.05}, "bias_init": "zeros",
                        "activation": "tanh"}).summary
    assert s["unit_spread_init"] == 0.0 and s["unit_spread_final"] == 0.0
    random = run_tiny(model={"activation": "tanh"}).summary
    assert random["unit_spread_final"] > 0.5
    final = random["final_metrics"]
    assert random["generalisation_gap"] == pytest.approx(final["test_loss"] - final["train_loss"])
