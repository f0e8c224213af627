"""Per-layer distributions: the 5/50/95% quantiles of each layer's |∂L/∂W| and outputs."""

import math

import numpy as np
import pytest
import torch
from test_faithful import step_zero_gradients

from gradlab.record.reader import read_record
from gradlab.train.probe import QUANTILE_SAMPLE, QUANTILES, _samples, nanquantiles


def test_a_small_tensor_gives_its_exact_quantiles_and_a_large_one_a_spread_sample():
    small = torch.arange(100, dtype=torch.float32)
    large = torch.arange(10 * QUANTILE_SAMPLE, dtype=torch.float32)
    rows = _samples([small, large])
    q = torch.nanquantile(rows, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64), dim=1)
    assert q[:, 0].tolist() == pytest.approx(np.quantile(small.numpy(), [0.05, 0.5, 0.95]))
    # evenly spaced entries of 0 … 10239: the quantiles of the whole, to a sample's precision
    assert q[:, 1].tolist() == pytest.approx(np.quantile(large.numpy(), [0.05, 0.5, 0.95]),
                                             rel=0.01)
    assert rows[1, 0] == 0 and rows[1, -1] == large[-1]


@pytest.mark.parametrize("numpy_sort", [True, False])  # False: a GPU's path, run on the CPU
@pytest.mark.parametrize("n", [1, 2, 17, QUANTILE_SAMPLE])
def test_the_probes_quantiles_are_torchs_nanquantile_value_for_value(n, numpy_sort):
    """The probe sorts with NumPy on the CPU (with torch elsewhere) but must give exactly what
    torch.nanquantile gives: rows padded with NaN to any length (one all NaN), ties, values
    near 1e-40, ±inf."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn(40, n, generator=g, dtype=torch.float64)
    x[:10] = x[:10].round()  # ties
    x[10:20] = x[10:20].abs() * 1e-40
    x[20, 0], x[21, -1] = math.inf, -math.inf
    for i, k in enumerate(torch.randint(0, n + 1, (40,), generator=g).tolist()):
        x[i, k:] = math.nan
    x[39] = math.nan
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    expected, got = torch.nanquantile(x, q, dim=1), nanquantiles(x, q, numpy_sort=numpy_sort)
    assert got.shape == expected.shape == (3, 40)
    assert torch.equal(got.isnan(), expected.isnan()) and got[:, 39].isnan().all()
    assert torch.equal(got.nan_to_num(0.5), expected.nan_to_num(0.5))


def test_the_recorded_gradient_quantiles_are_those_of_a_bare_backward(run_tiny):
    from conftest import tiny_config

    outcome = run_tiny(model={"depth": 3, "width": 16, "activation": "tanh"})
    rows = [r for r in read_record(outcome.path).layers if r["step"] == 0]
    cfg = tiny_config(model={"depth": 3, "width": 16, "activation": "tanh"})
    for row, grad in zip(rows, step_zero_gradients(cfg), strict=True):
        g = grad.abs().double().flatten().numpy()
        assert g.size <= QUANTILE_SAMPLE  # every entry: the exact quantiles
        expected = np.quantile(g, [0.05, 0.5, 0.95])
        assert [row["grad_q05"], row["grad_q50"], row["grad_q95"]] == pytest.approx(
            expected, rel=1e-5), row["name"]
    hidden = [r for r in rows if r["name"] != "head"]
    assert all(-1 <= r["act_q05"] <= r["act_q50"] <= r["act_q95"] <= 1 for r in hidden)
    assert rows[-1]["act_q50"] is None  # the read-out has no activation of its own


def test_the_figures_draw_the_quantile_bands(run_tiny):
    from gradlab.render.activation_figures import activations_figure
    from gradlab.render.step_figures import grad_distributions_figure

    record = read_record(run_tiny(model={"depth": 3, "width": 16, "activation": "tanh"}).path)
    labels = [c.get_label() for c in activations_figure(record).axes[0].collections]
    assert "5–95% of the outputs" in labels
    labels = [c.get_label() for c in grad_distributions_figure(record).axes[0].collections]
    assert "5–95% of |g|" in labels
