"""Config error text: `ConfigError`, pydantic's errors as key paths and plain words, did-you-mean.

Every message names the dotted key path and what is allowed, so `gradlab` can print
`configs/x.yaml: model.depth: must be ≥ 1, got -3` with no traceback.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """Every problem found in one config, each as (dotted key path, message).

    `origins` are the command line's overrides as (dotted key, how it was typed: `--set
    model.depth=3`, `--device gpu`), in order: a problem at a key an override set is shown
    as coming from it, `configs/x.yaml (--set model.dpth=3): model.dpth: unknown key …`,
    not from the file."""

    def __init__(self, source: str, problems: list[tuple[str, str]],
                 origins: typing.Sequence[tuple[str, str]] = ()):
        self.source = source
        self.problems = problems
        self.origins = list(origins)
        super().__init__(str(self))

    def origin(self, path: str, message: str = "") -> str | None:
        """The override a problem at `path` came from (the last one that set the key, a key
        inside it, or a new key above it; else one whose key the `message` names, as a check
        across sections does: `pretrain: … set model.residual: false`), or None: the file's."""
        for key, label in reversed(self.origins):
            if path and (path == key or path.startswith((key + ".", key + "["))
                         or key.startswith(path + ".")):
                return label
        named = message.split("; allowed:")[0]  # the message's own words, not a key list
        for key, label in reversed(self.origins):  # dotted keys only: `seeds`, `device` are words
            if "." in key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", named):
                return label
        return None

    def __str__(self) -> str:
        lines = []
        for path, msg in self.problems:
            origin = self.origin(path, msg)
            source = f"{self.source} ({origin})" if origin else self.source
            lines.append(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")
        return "\n".join(lines)


def translate(error: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    """Each pydantic error as (dotted key path, plain message), paths read against `root`."""
    problems = []
    for err in error.errors():
        path, fields = _display_path(err["loc"], root)
        if err["type"] == "union_tag_invalid":  # the bad value is the section's `kind`
            path = f"{path}.kind" if path else "kind"
        msg = _message(err, fields)
        key = str(err["loc"][-1]) if err["loc"] else ""
        if err["type"] == "extra_forbidden" and "." not in path:
            inside = [f"{section}.{key}" for section, models in _sections(root).items()
                      if any(key in m.model_fields for m in models)]
            if inside:  # a section's key given at the top (`precision`, `steps`): that first
                msg = re.sub(rf"unknown key '{re.escape(key)}'( \(did you mean '[^']*'\?\))?",
                             f"unknown key '{key}' (did you mean '{inside[0]}'?)", msg, count=1)
        if path == "seeds" and err["type"] == "list_type":  # `--seeds 3` is a count; this is not
            msg = (f"a list of seeds, e.g. [0, 1, 2], got {shown(err.get('input'))} (the --seeds "
                   "option also takes a count: --seeds 3 runs 0, 1, 2)")
        for line in msg.split("\n"):
            # Cross-section checks put their own key path at the start of each line.
            head, sep, rest = line.partition(": ")
            own_path = not path or head.startswith(path + ".")
            if sep and own_path and re.fullmatch(r"[a-z_]+(\.[A-Za-z0-9_.]+)?", head):
                problems.append((head, rest))
            else:
                problems.append((path, line))
    return problems


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error quotes it: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _message(err: Any, fields: list[str]) -> str:
    kind, ctx, given = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return f"unknown key '{key}'{did_you_mean(key, fields)}; allowed: {', '.join(fields)}"
    if kind == "missing":
        return "required item is missing" if isinstance(err["loc"][-1], int) \
            else "required key is missing"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = did_you_mean(str(given), allowed)
        return f"unknown value {shown(given)}{hint}; allowed: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        allowed = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        hint = did_you_mean(str(given.get("kind") if isinstance(given, dict) else given), allowed)
        return f"unknown kind {shown(ctx.get('tag'))}{hint}; allowed: {', '.join(allowed)}"
    if kind == "union_tag_not_found":
        return "needs a 'kind' key"
    bounds = {"greater_than_equal": "≥ {ge}", "greater_than": "> {gt}",
              "less_than_equal": "≤ {le}", "less_than": "< {lt}"}
    if kind in bounds:
        return f"must be {bounds[kind].format(**ctx)}, got {shown(given)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number, got {shown(given)}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {shown(given)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {shown(given)}"
    if kind in ("string_type",):
        return f"must be a string, got {shown(given)}"
    if kind == "string_pattern_mismatch":
        return f"must be letters, digits, '_', '.' or '-' (at most 100), got {shown(given)}"
    if kind in ("tuple_type", "list_type"):
        return f"must be a list ([a, b, ...]), got {shown(given)}"
    if kind == "too_long" and "max_length" in ctx:
        return f"must be a list of at most {ctx['max_length']} items, got {shown(given)}"
    if kind == "too_short" and "min_length" in ctx:
        return f"must be a list of at least {ctx['min_length']} items, got {shown(given)}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, got {shown(given)}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return str(err["msg"])


# Words people reach for that are not a near spelling of the name they mean.
SYNONYMS = {"gpu": "cuda"}


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the option `word` most likely meant, or "": a synonym
    (`gpu` → `cuda`), the same word in another case, else the closest spelling."""
    options = list(options)
    folded = word.strip().lower()
    match = [o for o in options if o == SYNONYMS.get(folded)] \
        or [o for o in options if o.lower() == folded] \
        or difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _sections(root: type[BaseModel]) -> dict[str, list[type[BaseModel]]]:
    """The top-level sections of `root` that are models (a union's every member), by name."""
    return {name: models for name, info in root.model_fields.items()
            if (models := _models_in(info.annotation))}


def _display_path(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[str, list[str]]:
    """Turn pydantic's location into a dotted key path, dropping union tags.

    Also returns the keys allowed at the parent of the last element, for
    unknown-key messages.
    """
    shown: list[str] = []
    node: Any = root
    fields: list[str] = list(root.model_fields)
    for part in loc:
        models = _models_in(node)
        tagged = [m for m in models if _tag(m) == part]
        if tagged and len(models) > 1:  # a discriminated union's tag in the loc
            node = tagged[0]
            fields = list(tagged[0].model_fields)
            continue
        if str(part).startswith("function-"):
            continue
        shown.append(str(part))
        model = next((m for m in models if part in m.model_fields), None)
        node = model.model_fields[str(part)].annotation if model is not None else None
        children = _models_in(node)
        if len(children) == 1:
            fields = list(children[0].model_fields)
    return ".".join(shown), fields


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not Literal:
        return None
    return str(typing.get_args(field.annotation)[0])
