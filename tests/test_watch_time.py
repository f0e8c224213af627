"""`gradlab.watch` on a user's own `nn.RNN`/`nn.LSTM`/`nn.GRU`: on the steps that record
gradients through time, the module runs one time step at a time with its own parameters
(`build.stepwise`); its output equals the fused module's, and the recorded ‖∂L/∂h_t‖ equal a
float64 reference that calls PyTorch's module on one time step at a time.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import read_csv
from test_sync import counting_syncs
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import gradlab
from gradlab.build.stepwise import attach, stepwise, time_steps, why_not_unrolled

F64 = torch.float64
T, B, HIDDEN = 20, 8, 16


def _outputs(result: tuple) -> list[torch.Tensor]:
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


def _grads(m: nn.RNNBase, x: torch.Tensor, hx: object, unrolled: bool) -> list[torch.Tensor]:
    """The outputs, and the gradients of the input and the parameters, of a loss on every
    output (unrolled for a probe, or not)."""
    steps = time_steps(m)
    assert steps is not None
    xi = x.clone().requires_grad_()
    m.zero_grad()
    steps.unroll(unrolled)
    outputs = _outputs(m(xi, hx))
    steps.unroll(False)
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=F64).view_as(o)).sum()
        for o in outputs).backward()
    return [*outputs, xi.grad, *(p.grad for p in m.parameters())]


CASES = [(cls, layers, batch_first, batched, with_hx, bias, nl)
         for cls, layers, batch_first, batched, with_hx, bias, nl in itertools.product(
             (nn.RNN, nn.LSTM, nn.GRU), (1, 3), (True, False), (True, False), (False, True),
             (True, False), ("tanh", "relu"))
         if nl == "tanh" or cls is nn.RNN]


def test_a_module_run_a_step_at_a_time_equals_the_fused_one() -> None:
    """Every mode, 1 and 3 layers, batch_first or not, unbatched input, a given initial
    state, no bias: `stepwise` gives the fused output and final state to float64 rounding,
    each h_t of the top layer through the tap. Unrolled for a probe, the module's output and
    its parameters' and input's gradients are the fused module's bit for bit, and no hook is
    left behind after unroll(False)."""
    torch.manual_seed(0)
    for cls, layers, batch_first, batched, with_hx, bias, nl in CASES:
        case = (cls.__name__, layers, batch_first, batched, with_hx, bias, nl)
        extra = {"nonlinearity": nl} if cls is nn.RNN else {}
        m = cls(5, 7, num_layers=layers, batch_first=batch_first, bias=bias, **extra).double()
        x = torch.randn(4, 6, 5, dtype=F64)
        if not batched:
            x = x[0]
        elif not batch_first:
            x = x.transpose(0, 1).contiguous()
        hx = None
        if with_hx:
            shape = (layers, 4, 7) if batched else (layers, 7)
            h0 = torch.randn(shape, dtype=F64)
            hx = (h0, torch.randn(shape, dtype=F64)) if cls is nn.LSTM else h0
        fused = m(x, hx)
        seen: list[torch.Tensor] = []
        def tap(h: torch.Tensor, seen: list[torch.Tensor] = seen) -> torch.Tensor:
            seen.append(h)
            return h

        shadow = stepwise(m, x, hx, tap)
        for a, b in zip(_outputs(fused), _outputs(shadow), strict=True):
            assert a.shape == b.shape, case
            assert torch.allclose(a, b, rtol=0, atol=1e-12), case
        assert len(seen) == 6 and all(h.requires_grad for h in seen), case  # h_1..h_T

        for a, b in zip(_grads(m, x, hx, False), _grads(m, x, hx, True), strict=True):
            assert torch.equal(a, b), case
        assert not m._forward_hooks, case


def test_a_shadow_that_overflowed_leaves_the_fused_values_alone() -> None:
    """Where the shadow is Inf/NaN (it overflowed where the fused module may not have), the
    output is still the fused one, not a NaN the probe made; finite entries carry the
    gradient into the shadow."""
    fused = torch.tensor([1.0, 3e38, -2.0], requires_grad=True)
    shadow = torch.tensor([1.0, math.inf, math.nan], requires_grad=True)
    out = attach(fused, shadow)
    assert torch.equal(out, fused)
    out.sum().backward()
    assert fused.grad.tolist() == [1.0, 1.0, 1.0]
    assert shadow.grad.tolist() == [1.0, 0.0, 0.0]


def test_what_is_not_unrolled_keeps_the_fused_output() -> None:
    assert why_not_unrolled(nn.LSTM(3, 4, bidirectional=True)) == "bidirectional"
    assert why_not_unrolled(nn.LSTM(3, 4, proj_size=2)) == "proj_size"
    assert time_steps(nn.GRU(3, 4, bidirectional=True)) is None
    # a packed sequence, and dropout between layers in training: the fused output stands
    for m, x in ((nn.LSTM(3, 4, batch_first=True),
                  pack_padded_sequence(torch.randn(2, 5, 3), [5, 3], batch_first=True)),
                 (nn.GRU(3, 4, num_layers=2, dropout=0.5, batch_first=True), torch.randn(2, 5, 3))):
        steps = time_steps(m)
        assert steps is not None
        seen: list[torch.Tensor] = []
        steps.tap.register_forward_hook(lambda mod, i, o, seen=seen: seen.append(o))
        steps.unroll(True)
        m(x)
        assert seen == []
        m.eval()  # no dropout: unrolled
        if not isinstance(x, torch.Tensor):
            continue
        m(x)
        assert len(seen) == 5


class Net(nn.Module):
    """Two recurrent layers, the loss read at the last time step only."""

    def __init__(self, cls: type[nn.RNNBase]):
        super().__init__()
        self.rnn = cls(3, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def reference_time_grads(model: Net, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """‖∂L/∂h_t‖ of the top layer in float64: the bottom layer fused, the top one called by
    PyTorch on one time step at a time, each h_t kept."""
    cls = type(model.rnn)
    ref = copy.deepcopy(model).double()
    bottom, top = (cls(n_in, HIDDEN, batch_first=True).double() for n_in in (3, HIDDEN))
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(bottom, f"{name}_l0").copy_(getattr(ref.rnn, f"{name}_l0"))
            getattr(top, f"{name}_l0").copy_(getattr(ref.rnn, f"{name}_l1"))
    below, _ = bottom(x.double())
    states, state = [], None
    for t in range(x.shape[1]):
        _, state = top(below[:, t:t + 1]) if state is None else top(below[:, t:t + 1], state)
        h = state[0] if isinstance(state, tuple) else state
        h.retain_grad()
        states.append(h)
    F.mse_loss(ref.head(states[-1][0]), y.double()).backward()
    return [float(h.grad.norm()) for h in states]


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_watched_recurrent_model_records_its_gradients_through_time(cls, tmp_path) -> None:
    torch.manual_seed(0)
    model = Net(cls)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(B, T, 3), torch.randn(B, 1)) for _ in range(3)]
    want = reference_time_grads(model, *batches[0])
    with gradlab.watch(model, every=1, steps=3, optimizer=opt, out=tmp_path, name="rnn") as w:
        for step, (x, y) in enumerate(batches):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            w.after_backward(step, loss=loss)
            opt.step()
            w.after_step(step)
    header, rows = read_csv(w.path / "time_grads.csv")
    assert header == ["step", "phase", "t", "grad_norm"]
    assert sorted({int(r["step"]) for r in rows}) == [0, 2]  # the first and the last step
    got = [float(r["grad_norm"]) for r in rows if r["step"] == "0"]
    assert [int(r["t"]) for r in rows if r["step"] == "0"] == list(range(1, T + 1))
    assert got == pytest.approx(want, rel=1e-5)
    assert want[0] / want[-1] < 1e-3  # it does vanish: the test is not of a flat line
    summary = json.loads((w.path / "summary.json").read_text())
    assert summary["time_grad_ratio_init"] == pytest.approx(want[0] / want[-1], rel=1e-5)
    [v] = [v for v in summary["verdicts"] if v["kind"] == "vanishing_time"]
    assert v["remedies"] and not any("--set" in r or "model." in r for r in v["remedies"])
    assert "through_time: rnn" in (w.path / "config.yaml").read_text()
    assert not model.rnn._forward_hooks  # closed: the module runs fused again


def test_a_step_that_records_time_gradients_still_fetches_once(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net(nn.LSTM)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(B, T, 3), torch.randn(B, 1)
    probe = gradlab.watch(model, every=1, steps=2, optimizer=opt, out=tmp_path)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    probe.after_backward(0, loss=loss)
    opt.step()
    with counting_syncs() as after:
        probe.after_step(0)
    probe.close()
    assert 1 <= sum(after.values()) <= 2  # the one fetch (and, on the CPU, a NumPy view)
    assert len(read_csv(Path(probe.path) / "time_grads.csv")[1]) == T


def test_a_bidirectional_model_has_no_time_gradients_and_says_so(tmp_path) -> None:
    class Bi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True, bidirectional=True)
            self.head = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    model = Bi()
    with gradlab.watch(model, every=1, steps=1, out=tmp_path) as w:
        loss = model(torch.randn(2, 5, 3)).sum()
        loss.backward()
        w.after_backward(0, loss=loss)
        w.after_step(0)
    assert not (w.path / "time_grads.csv").exists()
    assert "through_time: null" in (w.path / "config.yaml").read_text()
