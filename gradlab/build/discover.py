"""Probe points of a model gradlab did not build: its parameterised layers, found by type.

`discover(model, layers=None)` returns one `Found` per weight matrix to watch, in the order
the modules are registered (`gradlab.watch` puts the rows in the order the modules first run):
Linear, Bilinear, convolutions (1d/2d/3d and transposed), Embedding, normalisation layers
(batch, layer, group, instance, RMS) with an affine weight, MultiheadAttention (two rows: the
packed input projection, whose output is not one tensor, and the output projection, whose
output is the attention's output) and RNN/LSTM/GRU (one row per weight matrix, no z_l).
Frozen weights (`requires_grad=False`) and weights already watched (tied) are left out.
`ACTIVATION_KINDS` names the activation modules whose outputs are a layer's activations.

Problems with the model are `DiscoveryError`s naming it; nothing here changes the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradlab.build.probed import ProbedLayer

# weight-bearing layers with one weight whose module output is the layer's z_l
SINGLE = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag,
          nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
          nn.LayerNorm, nn.GroupNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))

# activation module → the statistic family its outputs are judged by
ACTIVATION_KINDS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu",
    nn.RReLU: "leaky_relu", nn.ELU: "elu", nn.CELU: "elu", nn.SELU: "selu", nn.GELU: "gelu",
    nn.SiLU: "silu", nn.Mish: "mish", nn.Softplus: "softplus", nn.Hardswish: "silu",
    nn.Tanh: "tanh", nn.Hardtanh: "tanh", nn.Softsign: "tanh", nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "sigmoid",
}


class DiscoveryError(ValueError):
    """A model (or an explicit layer list) the probe cannot watch, and why."""


@dataclass(frozen=True)
class Found:
    """One row to watch: the probe's declaration and the module that owns the weight."""

    layer: ProbedLayer
    owner: nn.Module


def activation_kind(module: nn.Module) -> str | None:
    """The activation family of an activation module, or None for any other module."""
    for cls in type(module).__mro__:
        if cls in ACTIVATION_KINDS:
            return ACTIVATION_KINDS[cls]
    return None


def display_name(name: str, module: nn.Module, model: nn.Module | None = None) -> str:
    """A module's qualified name as a record shows it: never empty, never a number (an
    `nn.Sequential`'s children are "0", "1", …, which a CSV reads back as numbers), so
    "Linear[0]"; the model itself is "(ClassName)"."""
    if not name:
        return f"({type(model if model is not None else module).__name__})"
    try:
        float(name)
    except ValueError:
        return name
    return f"{type(module).__name__}[{name}]"


def check_model(model: object) -> nn.Module:
    """The model, or a DiscoveryError saying why it cannot be watched."""
    if not isinstance(model, nn.Module):
        raise DiscoveryError(f"expected a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in params):
        raise DiscoveryError(f"{type(model).__name__} has lazy modules whose parameters are not "
                             "initialised yet: run one forward pass before watching it")
    if not params:
        raise DiscoveryError(f"{type(model).__name__} has no parameters: there is no gradient "
                             "to watch")
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise DiscoveryError(f"{type(model).__name__} is on the meta device ({meta} holds no "
                             "data): materialise it first, e.g. model.to_empty(device='cpu') "
                             "and initialise it")
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise DiscoveryError(f"{type(model).__name__} has parameters on several devices "
                             f"({', '.join(sorted(map(str, devices)))}): watch a model on one")
    if not any(p.requires_grad for p in params):
        raise DiscoveryError(f"{type(model).__name__} has no trainable parameters (every one "
                             "has requires_grad=False): nothing will have a gradient")
    return model


def discover(model: nn.Module, layers: Sequence[nn.Module | str | ProbedLayer] | None = None
             ) -> list[Found]:
    """The rows to watch: every known parameterised layer of `model`, or those of `layers`
    (modules of the model, their qualified names, or `ProbedLayer`s), in the order given."""
    names = {m: display_name(n, m, model) for n, m in model.named_modules()}
    found: list[Found] = []
    seen: set[int] = set()

    def add(rows: list[Found]) -> None:
        for row in rows:
            w = row.layer.weight
            if id(w) not in seen and w.requires_grad:
                seen.add(id(w))
                found.append(row)

    if layers is None:
        inside_attention: set[nn.Module] = set()
        for _, module in model.named_modules():
            if module in inside_attention:
                continue
            if isinstance(module, nn.MultiheadAttention):
                inside_attention.update(module.modules())
            add(_rows(names[module], module, strict=False))
        if not found:
            raise DiscoveryError(
                f"{type(model).__name__} has no trainable Linear, Conv, Embedding, "
                "normalisation, MultiheadAttention or RNN/LSTM/GRU layer: pass layers=[...] "
                "(modules with a weight) to say what to watch")
        return found
    if isinstance(layers, (str, nn.Module, ProbedLayer)):
        layers = [layers]
    params = {id(p) for p in model.parameters()}
    for item in layers:
        if isinstance(item, ProbedLayer):
            if id(item.weight) not in params:
                raise DiscoveryError(f"layer {item.name!r}: its weight is not a parameter of "
                                     "the model")
            owner = item.module or next((m for m in model.modules() if any(
                p is item.weight for p in m.parameters(recurse=False))), model)
            add([Found(item, owner)])
            continue
        if isinstance(item, str):
            module = dict(model.named_modules()).get(item)
            if module is None:
                raise DiscoveryError(f"layers: {item!r} is not a module of "
                                     f"{type(model).__name__}")
            name = display_name(item, module, model)
        elif isinstance(item, nn.Module):
            if item not in names:
                raise DiscoveryError(f"layers: {type(item).__name__} is not a module of "
                                     f"{type(model).__name__}")
            module, name = item, names[item]
        else:
            raise DiscoveryError(f"layers: expected modules or their names, got "
                                 f"{type(item).__name__}")
        rows = _rows(name, module, strict=True)
        if not any(r.layer.weight.requires_grad for r in rows):
            raise DiscoveryError(f"layers: {name} is frozen (requires_grad=False)")
        add(rows)
    if not found:
        raise DiscoveryError("layers: the list names no weight to watch")
    return found


def unwatched(model: nn.Module, found: Sequence[Found]) -> dict[str, int]:
    """The trainable `weight` matrices and kernels (2 or more dimensions) of `model`'s modules
    that none of `found` watches, counted by module type: the layers discovery passed over (a
    layer written from raw parameters), which `layers=[...]` can watch. Other parameters (a
    position embedding, attention's bias_k) are no layer's weight and are not counted."""
    watched = {id(f.layer.weight) for f in found}
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, (nn.MultiheadAttention, nn.RNNBase)):
            continue  # kinds discovery knows: their weights are watched row by row
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.requires_grad and weight.dim() >= 2 \
                and id(weight) not in watched:
            kind = type(module).__name__
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _rows(name: str, module: nn.Module, strict: bool) -> list[Found]:
    """The rows of one module: none for a module of no known kind (unless `strict`: then its
    `weight`, or a DiscoveryError)."""
    if isinstance(module, nn.MultiheadAttention):
        rows = []
        parts = ("in",) if module.in_proj_weight is not None else ("q", "k", "v")
        for part in parts:
            rows.append(Found(ProbedLayer(f"{name}.{part}_proj",
                                          _parameter(getattr(module, f"{part}_proj_weight"))),
                              module))
        # the attention's output is out_proj's output: its z_l, where ∂L/∂z is read
        rows.append(Found(ProbedLayer(f"{name}.out_proj", _parameter(module.out_proj.weight),
                                      module=module), module))
        return rows
    if isinstance(module, nn.RNNBase):
        return [Found(ProbedLayer(f"{name}.{pname}", p), module)
                for pname, p in module.named_parameters(recurse=False)
                if pname.startswith("weight_")]
    weight = getattr(module, "weight", None)
    if isinstance(module, SINGLE) or (strict and isinstance(weight, nn.Parameter)):
        if isinstance(weight, nn.Parameter) and weight.dim() >= 1:
            return [Found(ProbedLayer(name, weight, module=module), module)]
    if strict:
        raise DiscoveryError(f"layers: {name} ({type(module).__name__}) has no weight to watch")
    return []


def _parameter(value: object) -> nn.Parameter:
    assert isinstance(value, nn.Parameter)
    return value


def parameter_signature(model: nn.Module) -> tuple[tuple[int, bool, tuple[int, ...]], ...]:
    """What must not change while a model is watched: its parameters, whether each is
    trained, and their shapes."""
    return tuple((id(p), p.requires_grad, tuple(p.shape)) for p in model.parameters())


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
