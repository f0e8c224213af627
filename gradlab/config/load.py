"""The one door into a config: YAML (tags refused) → `--set` overrides → a validated `Config`.

`load_config(path, overrides)` reads and validates; `resolved(cfg)` is the plain form
written as a run's config.yaml, `config_hash(cfg)` identifies an experiment, and
`total_steps(cfg, n_train)` how long it trains. No torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gradlab.config.checks import cross_problems
from gradlab.config.messages import ConfigError, translate
from gradlab.config.schema import Config

# A config is a page of YAML: bounds that no real config comes near, so that a hostile file
# (a gigabyte of comments, an alias bomb, 10 000 levels of nesting) is refused before it costs
# memory or a traceback.
MAX_BYTES = 1 << 20  # 1 MiB
MAX_NODES = 100_000  # nodes of the document with every alias expanded
MAX_DEPTH = 64  # nesting of mappings and lists


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping as written, read within the bounds every config has (size,
    nesting, aliases; tags refused); ConfigError otherwise. `load_config` and a sweep spec
    read through here."""
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_BYTES:
            raise ConfigError(source, [("", f"the file is {size / 2**20:.1f} MiB; a config is "
                                            f"at most {MAX_BYTES >> 20} MiB")])
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(source, [("", f"cannot read: {e}")]) from None
    try:
        _check_depth(text, source)
        root = yaml.compose(text)
        _check_shape(root, source)
        _check_duplicates(root, source)
        raw = yaml.safe_load(text)  # safe: tags never construct Python objects
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(source, [_tag_problem(text, e)]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(source, [("", f"YAML syntax error: {where}{problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", f"must be a mapping of keys, got {type(raw).__name__}")])
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                labels: typing.Mapping[str, str] | None = None) -> Config:
    """Read a YAML file, apply `key.path=value` overrides, and validate; raise ConfigError.

    A problem at a key an override set names the override (`labels`: how each was typed,
    `{"device=gpu": "--device gpu"}`; `--set KEY=VALUE` otherwise), not the file alone."""
    source = str(path)
    raw = read_yaml(path)
    if "sweep" in raw:  # not a key of a config: the section that makes a file a sweep spec
        raise ConfigError(source, [("sweep", f"this is a sweep spec: gradlab sweep {source} runs "
                                             "it (run, compare, fix and predict take a config "
                                             "without a sweep: section)")])
    raw.setdefault("name", default_name(Path(path)))
    _beside(raw, Path(path))
    try:
        apply_overrides(raw, overrides, source)
        return config_from_dict(raw, source)
    except ConfigError as e:
        raise ConfigError(e.source, e.problems, origins(overrides, labels)) from None


def origins(overrides: typing.Iterable[str],
            labels: typing.Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Each override as (its dotted key, how the command line gave it), for `ConfigError`:
    `labels[item]` (`--device gpu`, `--steps 200`), else `--set item`."""
    found = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep and key.strip():
            found.append((key.strip(), (labels or {}).get(item, f"--set {item}")))
    return found


def _beside(raw: dict[str, Any], path: Path) -> None:
    """A data file named in a config by a relative path lies beside the config (not in the
    current directory); `--set data.path=…` on the command line stays relative to where the
    command runs. The resolved path is what the run's config.yaml records."""
    data = raw.get("data")
    if not isinstance(data, dict) or data.get("kind") != "file":
        return
    for key in ("path", "test_path"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[key] = str(path.resolve().parent / value)


def _check_depth(text: str, source: str) -> None:
    """Refuse a document with mappings and lists nested more than MAX_DEPTH deep (the top-level
    mapping is the first), from its parse events and as soon as the depth is reached:
    composing 10 000 nested lists first took 1 s before Python's recursion limit stopped it,
    the events to depth 65 a quarter of that."""
    depth = 0
    for event in yaml.parse(text):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(source, [("", f"nested more than {MAX_DEPTH} levels deep")])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _check_duplicates(root: yaml.Node | None, source: str) -> None:
    """Refuse a key given twice in one mapping (two `model:` sections): YAML keeps the last
    and the first would be dropped without a word. Every such key, at its dotted path."""
    problems: list[tuple[str, str]] = []
    seen_nodes: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if id(node) in seen_nodes:  # an alias: checked where it was defined
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
                path = f"{prefix}.{name}" if prefix and name is not None else name or prefix
                if name is not None and name != "<<":  # a merge key may repeat
                    if name in first:
                        problems.append((path, f"given twice (lines {first[name]} and "
                                               f"{key.start_mark.line + 1}): the second would "
                                               "silently replace the first"))
                    else:
                        first[name] = key.start_mark.line + 1
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix}.{i}" if prefix else str(i))

    if root is not None:
        walk(root, "")
    if problems:
        raise ConfigError(source, problems)


def _check_shape(root: yaml.Node | None, source: str) -> None:
    """Refuse a document larger than MAX_NODES once its aliases are expanded (each alias counts
    the whole subtree it repeats), or holding an anchor aliased inside its own node
    (`a: &x [*x]`, a value that contains itself). Its depth is already bounded (`_check_depth`)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose values are being counted

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:  # an alias: the same node again
            return sizes[id(node)]
        if id(node) in open_nodes:
            mark = node.start_mark
            raise ConfigError(source, [("", f"line {mark.line + 1}: an anchor is aliased inside "
                                            "its own value, which would contain itself")])
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        if total > MAX_NODES:
            raise ConfigError(source, [("", f"more than {MAX_NODES} values once its aliases "
                                            "are expanded (an alias bomb?)")])
        sizes[id(node)] = total
        open_nodes.discard(id(node))
        return total

    if root is not None:
        size(root)


def default_name(path: Path) -> str:
    """A run name from the file name, sanitised so it is always a single safe directory name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem).lstrip("._-")[:100]
    return name or "run"


def _tag_problem(text: str, error: yaml.constructor.ConstructorError) -> tuple[str, str]:
    """A refused YAML tag (e.g. `!!python/object/apply`), at its key path and line."""
    mark = error.problem_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    tag = re.search(r"tag '([^']*)'", str(error.problem))
    shown = tag.group(1).replace("tag:yaml.org,2002:", "!!") if tag else "a tag"
    key = _key_at(yaml.compose(text), mark) if mark else None
    return (key or "", f"YAML tag {shown} at {where} is not allowed: configs are plain data, "
                       "and tags that build objects are refused")


def _key_at(node: Any, mark: Any, prefix: str = "") -> str | None:
    """The dotted key path of the YAML node that starts at `mark`, if any."""
    if node is None:
        return None
    if node.start_mark.index == mark.index and prefix:
        return prefix
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{prefix}.{key.value}" if prefix else str(key.value)
            found = _key_at(value, mark, name)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _key_at(item, mark, f"{prefix}[{i}]")
            if found:
                return found
    return None


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Validate an already-parsed mapping (as read from YAML) into a Config."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(source, translate(e, Config)) from None
    problems = cross_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: typing.Iterable[str], source: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) into the raw mapping, in order.

    `train.steps` and `train.epochs` are two ways of giving one budget: setting one replaces
    the other the file gives (`--steps 200` on a config with `epochs: 5` trains 200 steps),
    unless the file gives both, which stays an error."""
    train = raw.get("train")
    both = isinstance(train, dict) and None not in (train.get("steps"), train.get("epochs"))
    given: set[str] = set()
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not all(part.strip() for part in key.split(".")):
            problems.append(("--set", f"expected key.path=value, got {item!r}"))
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str):  # a shorthand such as `init: xavier_normal`
                child = {_SHORTHAND_KEY.get(part, "name"): child}
            node[part] = child if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
        given.add(key.strip())
    if problems:
        raise ConfigError(source, problems)
    train = raw.get("train")
    for mine, other in (("steps", "epochs"), ("epochs", "steps")):
        if (not both and isinstance(train, dict) and f"train.{mine}" in given
                and f"train.{other}" not in given and train.get(mine) is not None):
            train[other] = None


_SHORTHAND_KEY = {"init": "scheme", "bias_init": "scheme", "recurrent_init": "scheme"}

def resolved(cfg: Config) -> dict[str, Any]:
    """The fully resolved config (defaults filled in) as plain data, for config.yaml."""
    return cfg.model_dump(mode="json")


def config_hash(cfg: Config) -> str:
    """A stable hash of the resolved config: equal hashes mean an identical experiment."""
    text = json.dumps(resolved(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def total_steps(cfg: Config, n_train: int) -> int:
    """Optimiser steps the run will take: `train.steps`, or epochs of full batches."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs * max(1, n_train // cfg.train.batch_size)
    return cfg.train.steps if cfg.train.steps is not None else 500


def config_paths(items: Iterable[Path]) -> list[Path]:
    """YAML files named directly, and every *.yaml/*.yml in named directories, sorted."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            paths.append(item)
    return paths
