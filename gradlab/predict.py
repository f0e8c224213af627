"""`gradlab predict CONFIG`: what the theory says about a network at init, beside what it does.

`predict(cfg)` trains nothing. It builds the data and the model exactly as a run does (same
seeds, same order), then reports, as JSON-safe data:

- **theory**: `analyse.theory.predict_mlp` of the resolved config, the mean-field quantities of
  Poole et al. 2016 and Schoenholz et al. 2017 (q*, χ₁, ξ, phase, the predicted first/last
  gradient ratio); for configs it cannot predict, `reasons` says which part breaks it.
- **measured**: one forward/backward pass on the run's first minibatch, in train mode (the
  gradients a run's step 0 logs): every probed layer's ‖∂L/∂W‖, each hidden layer's
  ‖∂L/∂z‖ at its pre-activation, the first/last ratio, the fitted per-layer slope; and the
  singular values of the input–output Jacobian of a few examples (dynamical isometry,
  Pennington et al. 2017), in float64.
- **agreement**: the theory's per-layer factor √χ₁ against the measured one.
- **recurrent**: the spectral radius and norm of each W_hh and what they say about
  ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ over the task's length.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from gradlab.analyse.agreement import fit_log_slope, slope_agreement
from gradlab.analyse.theory import predict_mlp
from gradlab.build.dataset import Dataset
from gradlab.build.optim import loss_function
from gradlab.build.probed import Built
from gradlab.config import Config, resolved
from gradlab.record.files import clean
from gradlab.runner import build_run, denormals_flushed, pick_device
from gradlab.train.loop import batches

EXAMPLES = 8  # examples whose input–output Jacobian is taken
JACOBIAN_CHUNK = 256  # output dimensions per vectorised backward pass (bounds the memory)
GATE_NAMES = {"rnn": ("h",), "lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


def predict(cfg: Config) -> dict[str, Any]:
    """Theory and measurement at init for one config; JSON-safe (`record.files.clean`: a
    non-finite number is written as "nan"/"inf"/"-inf", null means not measured)."""
    started = time.perf_counter()
    seeds = cfg.seeds
    if seeds:  # a group: measured as its first seed's run starts, which is the one it draws
        cfg = cfg.model_copy(update={"seed": seeds[0], "seeds": None})
    theory = predict_mlp(resolved(cfg))
    device = pick_device(cfg.device)
    threads = torch.get_num_threads()
    # One forward/backward of a batch is too small to gain from intra-op threads, and on a
    # loaded machine a second thread made it ~4x slower (measured: 8 s against 1.9 s)
    torch.set_num_threads(1)
    try:
        with denormals_flushed(cfg.flush_denormal) as flushed:
            data, built = build_run(cfg, device, training=False)  # measured in float32
            measured = measure(cfg, built, data)
            if seeds:
                measured["notes"].append(f"seed {seeds[0]}, the first of the config's seeds "
                                         f"{', '.join(map(str, seeds))}")
            measured["jacobian"] = jacobian(built.model, data, cfg)
            recurrent = (recurrent_bounds(cfg, built, data, measured.get("time_grad_ratio"))
                         if built.time is not None else None)
    finally:
        torch.set_num_threads(threads)
    return clean({
        "name": cfg.name, "kind": cfg.model.kind, "depth": cfg.model.depth,
        "width": cfg.model.width, "n_in": data.n_in, "n_out": data.n_out,
        "device": str(device), "flush_denormal": flushed,
        "theory": theory, "measured": measured,
        "agreement": agreement(theory, measured, data.n_in, cfg.model.width),
        "recurrent": recurrent,
        "seconds": time.perf_counter() - started,
    })


def measure(cfg: Config, built: Built, data: Dataset) -> dict[str, Any]:
    """One forward/backward pass on the first minibatch a run trains on; no optimiser step.

    The same batch, mode and (for recurrent models) unrolled top layer as a run's step 0, so
    `grad_norm` matches the first row of that run's layers.csv."""
    model = built.model
    model.train()
    loss_fn = loss_function(cfg.train.loss, data.task, data.n_out)
    idx = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed, data.x_train.device))
    deltas: dict[int, torch.Tensor] = {}
    states: list[torch.Tensor | None] = []
    handles = []
    for i, layer in enumerate(built.layers):  # ∂L/∂z_l where the builder says z_l passes
        module = getattr(layer, "module", None)
        if module is not None:
            handles.append(module.register_forward_hook(_keep_grad(deltas, i, "output")))
        elif layer.activation is not None:
            handles.append(layer.activation.register_forward_hook(_keep_grad(deltas, i, "input")))
    if built.time is not None:
        handles.append(built.time.tap.register_forward_hook(_keep_output_grad(states)))
        built.time.unroll(True)
    try:
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        if built.time is not None:
            built.time.unroll(False)
    zero = torch.zeros((), device=data.x_train.device)
    grads = [layer.weight.grad if layer.weight.grad is not None else zero for layer in built.layers]
    nan = torch.full((), math.nan, dtype=torch.float64, device=zero.device)
    delta_list = [deltas.get(i, nan) for i in range(len(built.layers))]
    time_list = [g if g is not None else zero for g in states]
    norms = torch.cat([_norms64(grads), torch.stack(delta_list),
                       _norms64(time_list) if time_list else nan[None][:0],
                       loss.detach().double()[None]]).cpu().tolist()  # one transfer
    n = len(built.layers)
    grad_norm, delta_norm, time_norm = norms[:n], norms[n:2 * n], norms[2 * n:-1]
    layers: list[dict[str, Any]] = []
    for i, (layer, g, d) in enumerate(zip(built.layers, grad_norm, delta_norm)):
        row: dict[str, Any] = {"name": layer.name, "shape": list(layer.shape),
                               "hidden": layer.activation is not None, "grad_norm": g}
        if i in deltas:
            row["delta_norm"] = d
        layers.append(row)
    out: dict[str, Any] = {
        "batch": len(idx), "loss": norms[-1], "layers": layers,
        "grad_ratio": _ratio(grad_norm[0], grad_norm[-1]),
        "log_slope": None, "delta_log_slope": None, "slope_layers": None, "slope_excluded": [],
    }
    hidden = [i for i, layer in enumerate(built.layers) if layer.activation is not None]
    if cfg.model.kind == "mlp" and len(hidden) >= 2:
        names = [built.layers[i].name for i in hidden]
        slope, used, excluded = fit_log_slope([grad_norm[i] for i in hidden], names)
        out.update(log_slope=slope, slope_layers=used, slope_excluded=excluded)
        delta, delta_used, delta_left = fit_log_slope([delta_norm[i] for i in hidden], names)
        out.update(delta_log_slope=delta, delta_slope_layers=delta_used,
                   delta_slope_excluded=delta_left)
    if time_norm:
        out["time_grads"] = time_norm
        out["time_grad_ratio"] = _ratio(time_norm[0], time_norm[-1])
    out["notes"] = []  # where the run's own step 0 differs from this measurement
    if cfg.train.precision != "fp32":
        out["notes"].append(f"in float32: the run computes in {cfg.train.precision} "
                            "(autocast), where small gradients may underflow to 0 (its "
                            "layers.csv grad_underflow)")
    if cfg.pretrain is not None:
        out["notes"].append("at the random init: the run pretrains its layers first, so its "
                            "step 0 starts from other weights")
    return out


def _norms64(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's 2-norm accumulated in float64, as the probe does: float32 squares of
    entries below ~1e-19 underflow, and a vanishing layer's norm would read 0."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))


def _keep_grad(store: dict[int, torch.Tensor], index: int, where: str) -> Any:
    """A forward hook keeping ‖∂L/∂z‖ (float64, as the probe) of the module's output z, or of
    its input (an activation module's input is the layer's pre-activation)."""
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        z = output if where == "output" else inputs[0]
        if isinstance(z, torch.Tensor) and z.requires_grad:
            z.register_hook(lambda g: store.__setitem__(
                index, torch.linalg.vector_norm(g.detach(), dtype=torch.float64)))

    return hook


def _keep_output_grad(store: list[torch.Tensor | None]) -> Any:
    """A forward hook on the time tap keeping ∂L/∂h_t for each t, in time order."""
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        t = len(store)
        store.append(None)
        if output.requires_grad:
            output.register_hook(lambda g: store.__setitem__(t, g.detach().clone()))

    return hook


def _ratio(a: float, b: float) -> float | None:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def jacobian(model: nn.Module, data: Dataset, cfg: Config) -> dict[str, Any]:
    """Singular values of ∂(output)/∂(input) for the first EXAMPLES training examples.

    Taken in float64 on a copy of the model (deep sigmoid nets underflow float32 here), in eval
    mode; batch norm uses the statistics of the run's first minibatch, so each example's
    Jacobian is that of the network as it normalises that batch, with the batch held fixed.
    `body` is the Jacobian of the last hidden representation (the read-out removed), the
    product of the layer Jacobians that dynamical isometry is about (Pennington et al. 2017);
    `output` includes the read-out (one row per output: a single singular value for one output).
    Sequence inputs are flattened over (time, features)."""
    net = copy.deepcopy(model).double()
    for p in net.parameters():
        p.grad = None
    x = data.x_train[:EXAMPLES].double()
    notes = freeze_at_first_batch(net, data, cfg)
    net.eval()
    out: dict[str, Any] = {"examples": len(x), "dtype": "float64", "notes": notes,
                           "output": spectrum(jacobians(net, x))}
    if isinstance(getattr(net, "head", None), nn.Module) and (cfg.model.kind != "mlp"
                                                              or cfg.model.depth > 0):
        net.head = nn.Identity()  # the network up to its read-out
        out["body"] = spectrum(jacobians(net, x))
    else:
        out["body"] = None
    return out


def freeze_at_first_batch(net: nn.Module, data: Dataset, cfg: Config) -> list[str]:
    """Give every batch norm of `net` (float64) the statistics the run's first minibatch has in
    train mode, so that in eval mode it normalises any input as training normalised that
    batch; the notes to show (none without batch norm)."""
    notes: list[str] = []
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms:
        first = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed,
                             data.x_train.device))
        counts: dict[int, int] = {}  # values per channel each norm saw
        hooks = [m.register_forward_pre_hook(
            lambda m, args: counts.__setitem__(id(m), args[0].numel() // m.num_features))
            for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one pass, exactly that batch's
        with torch.no_grad():
            net.train()
            net(data.x_train[first].double())
            for m in norms:  # the running variance is unbiased (n/(n-1)); train mode divides
                n = counts.get(id(m), 0)  # by the biased one, as the run normalised the batch
                if n > 1 and m.running_var is not None:
                    m.running_var.mul_((n - 1) / n)
        for h in hooks:
            h.remove()
        notes.append("batch norm in eval mode with the first minibatch's statistics")
    return notes


def jacobians(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians (examples, outputs, inputs), inputs and outputs flattened.

    One forward pass of the batch, then batched vector–Jacobian products over the basis of one
    example's output: each example's output depends on that example alone (eval mode, no batch
    statistics), so the batch's vjp with cotangent e_k at every example holds each example's
    own row k. autograd's `is_grads_batched` is the vmap of `torch.func` without its first-call
    import of TorchDynamo (about a second); JACOBIAN_CHUNK rows at a time bound the memory."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        # fused LSTM/GRU layers have no batching rule: vmap falls back to a loop, and says so
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        y = net(x).reshape(len(x), -1)
        n = y.shape[1]
        if not y.requires_grad:  # an output that does not depend on the input at all
            return x.new_zeros(len(x), n, x[0].numel())
        rows = []
        for start in range(0, n, JACOBIAN_CHUNK):
            k = min(JACOBIAN_CHUNK, n - start)
            basis = y.new_zeros(k, *y.shape)
            basis[torch.arange(k), :, start + torch.arange(k)] = 1.0
            (g,) = torch.autograd.grad(y, x, basis, retain_graph=start + k < n,
                                       is_grads_batched=True, allow_unused=True,
                                       materialize_grads=True)
            rows.append(g.reshape(k, len(x), -1))
    return torch.cat(rows).movedim(0, 1)


def spectrum(J: torch.Tensor) -> dict[str, Any]:
    """Singular values of each example's Jacobian, pooled: min, median, max over the nonzero
    ones, their spread max/min, and the mean of σ² over all of them (1/k tr JJᵀ).

    A singular value below σ_max · max(shape) · ε of its own example's Jacobian is numerically
    zero (the rank rule of `numpy.linalg.matrix_rank`): a ReLU net's last layer cuts the
    directions its inactive units would carry. Those are counted in `zero`, not in the spread."""
    s = torch.linalg.svdvals(J)  # (examples, min(outputs, inputs)), each row descending
    tol = s[:, :1] * max(J.shape[1:]) * torch.finfo(s.dtype).eps
    nonzero = s[(s > tol) & (s > 0)]
    lo, hi = (float(nonzero.min()), float(nonzero.max())) if nonzero.numel() else (0.0, 0.0)
    return {
        "shape": list(J.shape[1:]),
        # the median proper (Tensor.median gives the lower of the two middle values)
        "singular_values": {"min": lo, "median": float(torch.quantile(nonzero, 0.5))
                            if nonzero.numel() else 0.0,
                            "max": hi, "count": int(s.numel()),
                            "zero": int(s.numel() - nonzero.numel())},
        "spread": hi / lo if lo > 0 else None,
        "log10_spread": math.log10(hi / lo) if lo > 0 else None,
        "mean_squared_singular_value": float((s**2).mean()),
    }


def recurrent_bounds(cfg: Config, built: Built, data: Dataset,
                     measured_ratio: float | None) -> dict[str, Any]:
    """The spectral radius ρ and norm σ₁ of each layer's W_hh (per gate block for LSTM/GRU)
    and what the top layer's say about ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ over the task's T steps."""
    kind = cfg.model.kind
    gates = GATE_NAMES.get(kind, ("h",))
    layers = []
    for layer in built.layers:
        if not layer.name.endswith(".hh"):
            continue
        blocks = layer.weight.detach().double().cpu().chunk(len(gates), dim=0)
        radius = [float(torch.linalg.eigvals(b).abs().max()) for b in blocks]
        norm = [float(torch.linalg.matrix_norm(b, ord=2)) for b in blocks]
        row: dict[str, Any] = {"name": layer.name, "spectral_radius": max(radius),
                               "spectral_norm": max(norm)}
        if len(gates) > 1:
            row["gates"] = {g: {"spectral_radius": r, "spectral_norm": s}
                            for g, r, s in zip(gates, radius, norm)}
        layers.append(row)
    length = int(data.x_train.shape[1])
    top = layers[-1]
    steps = length - 1  # transitions from h_1 to h_T
    with np.errstate(over="ignore", under="ignore"):
        by_norm = float(np.power(top["spectral_norm"], steps))
        by_radius = float(np.power(top["spectral_radius"], steps))
    gated = kind != "rnn"
    readout_every = cfg.model.readout != "last"
    if gated:
        article = "an" if kind == "lstm" else "a"
        meaning = (f"indicative only: {article} {kind.upper()}'s step Jacobian is gated (the "
                   "cell path through its gates is not W_hh), so ρ^(T−1) and σ₁^(T−1) bound "
                   "nothing")
    elif readout_every:
        meaning = ("indicative only: the loss reads every h_t (readout: every), so ∂L/∂h_1 "
                   "has direct terms the product of step Jacobians does not bound")
    else:
        meaning = (f"σ₁^(T−1) is an upper bound on ‖∂L/∂h_1‖/‖∂L/∂h_T‖ (|φ'| ≤ 1 for "
                   f"{cfg.model.rnn_nonlinearity}: each step's Jacobian diag(φ')·W_hh has norm "
                   "≤ σ₁); ρ^(T−1) is the rate of the linearised recurrence, indicative only")
    return {
        "kind": kind, "layers": layers, "length": length,
        "bound": {"transitions": steps, "spectral_norm_bound": by_norm,
                  "spectral_radius_rate": by_radius, "upper_bound": not gated and not readout_every,
                  "measured": measured_ratio,
                  "holds": (measured_ratio <= by_norm * (1 + 1e-6)
                            if measured_ratio is not None and not gated and not readout_every
                            else None),
                  "meaning": meaning},
    }


def agreement(theory: dict[str, Any], measured: dict[str, Any], n_in: int,
              width: int) -> dict[str, Any] | None:
    """`analyse.agreement.slope_agreement` of the theory's √χ₁ and the measured weight-gradient
    slope, with `delta_*`, the same for the pre-activation gradients ‖∂L/∂z_l‖ (the quantity
    the theory is about: a weight gradient also carries its layer's input ‖h_{l−1}‖), and,
    for a square body (n_in = width), the body Jacobian's mean squared singular value against
    χ₁^depth (Pennington et al. 2017: (1/N) tr JJᵀ = χ₁^L with every layer at q*)."""
    chi, slope = theory.get("chi1"), measured.get("log_slope")
    if not theory.get("predictable") or chi is None or slope is None:
        return None
    out = slope_agreement(chi, slope, len(measured.get("slope_layers") or []),
                          measured.get("delta_log_slope"),
                          len(measured.get("delta_slope_layers") or []))
    if out is None:
        return None
    out["left_out"] = (measured.get("delta_slope_excluded") if out.get("delta_verdict")
                       is not None else measured.get("slope_excluded")) or []
    body = (measured.get("jacobian") or {}).get("body")
    depth = int(theory.get("depth") or 0)
    out["jacobian_mean_squared"] = None
    if body is not None and n_in == width and depth:
        with np.errstate(over="ignore", under="ignore"):
            expected = float(np.power(chi, depth))
        got = body["mean_squared_singular_value"]
        out["jacobian_mean_squared"] = {
            "predicted": expected, "measured": got,
            "ratio": got / expected if expected > 0 and math.isfinite(expected) else None}
    return out
