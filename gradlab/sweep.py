"""`gradlab sweep CONFIG --grid KEY=VALUES ...`: the cross product of overrides, run as
variants through `compare`'s worker pool, collected into one sweep record (a driver).

`plan_sweep` reads the config (or a sweep spec: a config with a `sweep:` section holding a
`grid:`, `seeds:`, `plot:` and `expect:` claims), expands the grid and validates every point
before anything runs (`ConfigError`, naming the key path). `run_sweep` writes each point as a
patched config into the record (`configs/NAME.yaml`), runs them with `compare.compare`
(so `--jobs`, `--reuse`, stop signals and failure isolation are compare's), then writes
sweep.csv and sweep.json (`record.sweep`) and checks the claims (`check_claims`).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradlab.analyse.expect import MISSING, describe_wanted, holds
from gradlab.config import ConfigError, apply_overrides, config_from_dict, default_name
from gradlab.config.load import _SHORTHAND_KEY as SHORTHAND_KEY
from gradlab.config.load import _beside, read_yaml
from gradlab.config.messages import did_you_mean
from gradlab.config.schema import NAME_PATTERN, SUMMARY_FIELDS
from gradlab.record.files import unique_dir, utc_stamp, write_atomic
from gradlab.record.guard import RecordWriteError, cause
from gradlab.record.sweep import (
    LEAD,
    PREDICTION,
    TEXT_COLUMNS,
    link_variants,
    short_labels,
    table_row,
    write_sweep,
    write_table,
)

MAX_VARIANTS = 1000  # grid points run without --yes
MAX_RANGE = 10_000  # values one range may generate
MAX_PROBLEMS = 20  # problems listed before the check stops
GRID_SOURCE = "--grid"
SPEC_KEYS = ("grid", "seeds", "plot", "expect")
CLAIM_KEYS = ("claim", "where", "every", "any_of")
REFUSED_KEYS = {"name": "the sweep names each point itself",
                "seeds": "give the seeds with --seeds (or sweep.seeds), not as a grid key",
                "expect": "claims about a sweep go in sweep.expect"}


# ---------------------------------------------------------------- the grid


@dataclass
class Axis:
    key: str  # a dotted config key
    spec: str  # as written: `10,20,40`, `0.05:0.3:8`, `log:1e-3:1e-1:5`, or a YAML list
    values: list[Any]
    option: bool = True  # given as --grid (else by the spec's sweep.grid)

    @property
    def origin(self) -> str:
        return "--grid" if self.option else "sweep.grid"


def parse_values(key: str, text: str) -> list[Any]:
    """The values of one `--grid KEY=VALUES`: a comma list of YAML values (`10,20,40,80`,
    `relu,tanh`, or a YAML flow list `[[0.9, 0.99], [0.5, 0.9]]`), an evenly spaced range
    `start:stop:count` (both ends included), or a log-spaced one `log:start:stop:count`.
    A range of integers written as integers stays integer where every value is one."""
    text = text.strip()
    if not text:
        raise _grid_error(key, "no values (an empty list)")
    if text.startswith("["):
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or "not YAML"
            raise _grid_error(key, f"{text!r} is not a YAML list ({problem})") from None
        if not isinstance(values, list):
            raise _grid_error(key, f"{text!r} is not a YAML list")
        return _distinct(key, values)
    if ":" in text:
        return _range(key, text)
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise _grid_error(key, f"{text!r} has an empty item")
    return _distinct(key, [_yaml_value(p) for p in parts])


def _yaml_value(text: str) -> Any:
    """A number as a number (YAML 1.1 reads `1e-3` as text), anything else as YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _range(key: str, text: str) -> list[Any]:
    parts = text.split(":")
    log = parts[0].strip().lower() == "log"
    if log:
        parts = parts[1:]
    form = "log:start:stop:count" if log else "start:stop:count"
    if len(parts) != 3:
        raise _grid_error(key, f"{text!r}: a range is {form}")
    try:
        start, stop = float(parts[0]), float(parts[1])
        count = int(parts[2])
    except ValueError:
        raise _grid_error(key, f"{text!r}: a range is {form}, with numbers for start and stop "
                               "and an integer count") from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise _grid_error(key, f"{text!r}: start and stop must be finite")
    if count < 1:
        raise _grid_error(key, f"{text!r}: an empty range (count {count}); count is at least 1")
    if count > MAX_RANGE:
        raise _grid_error(key, f"{text!r}: at most {MAX_RANGE} values in one range")
    if log and (start <= 0 or stop <= 0):
        raise _grid_error(key, f"{text!r}: a log range needs start and stop > 0")
    if count > 1 and start == stop:
        raise _grid_error(key, f"{text!r}: start equals stop, so every value repeats")
    if count == 1:
        values = [start]
    elif log:
        a, b = math.log(start), math.log(stop)
        values = [math.exp(a + (b - a) * i / (count - 1)) for i in range(count)]
        values[0], values[-1] = start, stop
    else:
        values = [start + (stop - start) * i / (count - 1) for i in range(count)]
        values[-1] = stop
    values = [float(f"{v:.12g}") for v in values]  # 0.30000000000000004 → 0.3
    integral = all(re.fullmatch(r"\s*[-+]?\d+\s*", p) for p in parts[:2])
    if integral and all(abs(v - round(v)) < 1e-9 * max(1.0, abs(v)) for v in values):
        return _distinct(key, [int(round(v)) for v in values])
    return _distinct(key, values)


def _distinct(key: str, values: list[Any]) -> list[Any]:
    if not values:
        raise _grid_error(key, "no values (an empty list)")
    seen = []
    for v in values:
        if v in seen:
            raise _grid_error(key, f"the value {v!r} appears twice")
        seen.append(v)
    return values


def _grid_error(key: str, message: str) -> ConfigError:
    return ConfigError(GRID_SOURCE, [(key, message)])


def parse_grid(item: str) -> Axis:
    """`--grid KEY=VALUES` as an Axis (ConfigError naming the key for bad input)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(GRID_SOURCE, [("", f"expected KEY=VALUES (model.depth=10,20,40), "
                                             f"got {item!r}")])
    return Axis(key, text.strip(), parse_values(key, text))


def _axis_from_spec(key: str, value: Any, source: str) -> Axis:
    where = f"sweep.grid.{key}"
    if isinstance(value, str):
        try:
            return Axis(key, value, parse_values(key, value), option=False)
        except ConfigError as e:
            raise ConfigError(source, [(where, msg) for _, msg in e.problems]) from None
    values = value if isinstance(value, list) else [value]
    try:
        return Axis(key, json.dumps(values), _distinct(key, values), option=False)
    except ConfigError as e:
        raise ConfigError(source, [(where, msg) for _, msg in e.problems]) from None


# ---------------------------------------------------------------- the plan


@dataclass
class Point:
    name: str
    values: dict[str, Any]  # swept key → value
    raw: dict[str, Any]  # the patched config, as plain data


@dataclass
class Plan:
    source: Path  # the base config (or sweep spec) as given
    name: str  # the base config's name
    base: dict[str, Any]  # the base config with the overrides applied (no `sweep:` section)
    axes: list[Axis]
    points: list[Point]
    overrides: list[str]
    seeds: list[int] | None
    claims: list[dict[str, Any]] = field(default_factory=list)
    plot: str | None = None

    @property
    def keys(self) -> list[str]:
        return [a.key for a in self.axes]

    @property
    def runs(self) -> int:
        return len(self.points) * len(self.seeds or [0])


def read_spec(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The YAML as written and its `sweep:` section (empty for a plain config), read with the
    bounds `config.load_config` puts on any config (size, nesting, aliases, no tags)."""
    source = str(path)
    raw = read_yaml(path)
    spec = raw.pop("sweep", None) or {}
    if not isinstance(spec, dict):
        raise ConfigError(source, [("sweep", "must be a mapping (grid, seeds, plot, expect)")])
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(source, [(f"sweep.{k}", f"unknown key; allowed: {', '.join(SPEC_KEYS)}")
                                   for k in unknown])
    raw.setdefault("name", default_name(Path(path)))
    _beside(raw, Path(path))  # a data file named relative to the config, as load_config reads it
    return raw, spec


def plan_sweep(path: Path, grid: list[str], overrides: list[str] | None = None,
               max_variants: int = MAX_VARIANTS, yes: bool = False) -> Plan:
    """Expand and check the sweep: every point is validated before anything runs; bad input
    raises ConfigError naming the key path (and the grid value that caused it)."""
    source = str(path)
    raw, spec = read_spec(path)
    axes = [_axis_from_spec(str(k), v, source) for k, v in (spec.get("grid") or {}).items()]
    given: set[str] = set()
    for item in grid:
        axis = parse_grid(item)
        if axis.key in given:  # one --grid per key: a second would silently win
            raise _grid_error(axis.key, "given twice: put every value in one --grid "
                                        f"{axis.key}=A,B,...")
        given.add(axis.key)
        axes = [a for a in axes if a.key != axis.key] + [axis]  # --grid replaces the spec's
    if not axes:
        raise ConfigError(GRID_SOURCE if grid or "grid" not in spec else source, [
            ("", "nothing to sweep: give --grid KEY=VALUES (or a sweep.grid section in the "
                 "config)")])
    # a problem with a point is the option's when a --grid made the grid, else the file's
    label = GRID_SOURCE if any(a.option for a in axes) else source
    refused = [(a.key, REFUSED_KEYS[a.key]) for a in axes if a.key in REFUSED_KEYS]
    if refused:
        raise ConfigError(label, refused)
    if spec.get("seeds") is not None:
        raw["seeds"] = spec["seeds"]
    swept = [o for o in overrides or [] if o.split("=", 1)[0].strip().startswith("sweep")]
    if swept:  # the spec's sweep section is the grid's, not a config key
        raise ConfigError(source, [("sweep", "the sweep section is set by sweep's options, "
                                             "not --set: --grid, --seeds, --plot, --check")],
                          [(o.split("=", 1)[0].strip(), f"--set {o}") for o in swept])
    apply_overrides(raw, overrides or [], source)
    raw.pop("expect", None)  # a base config's claims are about it, not about the points
    try:
        base_cfg = config_from_dict(copy.deepcopy(raw), source)  # the base alone must be valid
    except ConfigError as e:  # the spec's seeds are its sweep.seeds
        if spec.get("seeds") is None:
            raise
        raise ConfigError(e.source, [("sweep.seeds" if k == "seeds" else k, msg)
                                     for k, msg in e.problems], e.origins) from None
    count = math.prod(len(a.values) for a in axes)
    if count > max_variants and not yes:
        runs = count * len(base_cfg.seeds or [0])
        raise ConfigError(GRID_SOURCE, [("", f"{count} variants ({runs} runs) is more than "
                                             f"--max-variants {max_variants}: pass --yes to run "
                                             "them all, or a smaller grid")])
    _check_each_value(raw, axes, source, label)
    names = point_names(base_cfg.name, axes)
    points = []
    problems: list[tuple[str, str]] = []
    for combo, name in zip(itertools.product(*(a.values for a in axes)), names):
        values = dict(zip([a.key for a in axes], combo))
        patched = patch(raw, values, name)
        try:
            config_from_dict(copy.deepcopy(patched), source)
        except ConfigError as e:
            problems += [(p, f"{msg} (at the point {_where(values)})") for p, msg in e.problems]
            if len(problems) >= MAX_PROBLEMS:
                problems.append(("", "… (further points not checked)"))
                break
        points.append(Point(name, values, patched))
    if problems:
        raise ConfigError(label, problems)
    claims = check_claim_specs(spec.get("expect"), source)
    plot = spec.get("plot")
    keys = [a.key for a in axes]
    problems = [(f"sweep.expect.{i}.{part}.{k}", why) for i, c in enumerate(claims)
                for part in ("where", "every") for k in (c.get(part) or {})
                if (why := field_problem(k, keys))]
    problems += [(f"sweep.expect.{i}.any_of.{k}", why) for i, c in enumerate(claims)
                 for alt in c.get("any_of") or [] for k in alt if (why := field_problem(k, keys))]
    if plot and (why := field_problem(str(plot), keys, plot=True, text_keys=text_keys(axes))):
        problems.append(("sweep.plot", why))
    if problems:
        raise ConfigError(source, problems)
    return Plan(Path(path), base_cfg.name, raw, axes, points, list(overrides or []),
                base_cfg.seeds, claims, str(plot) if plot else None)


def _check_each_value(raw: dict[str, Any], axes: list[Axis], source: str,
                      label: str = GRID_SOURCE) -> None:
    """The first point, then each grid value in turn with the other keys at their first
    values: a problem is named by the key and the value that caused it, once."""
    name = str(raw.get("name"))
    first = {a.key: a.values[0] for a in axes}
    try:
        config_from_dict(patch(raw, first, name), source)
    except ConfigError as e:
        raise ConfigError(label, [(p, f"{msg} (at the point {_where(first)})")
                                  for p, msg in e.problems]) from None
    problems = []
    for axis in axes:
        for value in axis.values[1:]:
            try:
                config_from_dict(patch(raw, {**first, axis.key: value}, name), source)
            except ConfigError as e:
                problems += [(p or axis.key, f"{msg} (from {axis.origin} "
                                             f"{axis.key}={_show(value)})")
                             for p, msg in e.problems]
    if problems:
        raise ConfigError(label, problems[:MAX_PROBLEMS])


def _where(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in values.items())


def patch(raw: dict[str, Any], values: dict[str, Any], name: str) -> dict[str, Any]:
    """The base config with one point's values set (a deep copy) and the point's name. Set as
    values, not YAML text: `1e-05` must stay a number."""
    patched = copy.deepcopy(raw)
    for key, value in values.items():
        node = patched
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if isinstance(child, str):  # a shorthand such as `init: xavier_normal`
                child = {SHORTHAND_KEY.get(part, "name"): child}
            node[part] = child if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = copy.deepcopy(value)
    patched["name"] = name
    return patched


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _value_text(value: Any, digits: int) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.{digits}g}".replace("+", "")
    else:
        text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "_"


def point_names(base: str, axes: list[Axis]) -> list[str]:
    """A distinct name per point within the schema's NAME_PATTERN: `NAME.depth_20.gain_1.41`
    (more digits where 4 would make two alike; `NAME.pN` where the name would be too long)."""
    labels = short_labels([a.key for a in axes])
    combos = list(itertools.product(*(a.values for a in axes)))
    for digits in (4, 8, 17):
        names = [base + "".join(f".{labels[a.key]}_{_value_text(v, digits)}"
                                for a, v in zip(axes, combo)) for combo in combos]
        if len(set(names)) == len(names) and all(re.match(NAME_PATTERN, n) for n in names):
            return names
    width = len(str(len(combos) - 1))
    return [f"{base[:90]}.p{i:0{width}d}" for i in range(len(combos))]


# ---------------------------------------------------------------- claims

ROW_KEYS = (*LEAD, *PREDICTION, "run_dir")  # sweep.csv columns that are not summary fields


def text_keys(axes: list[Axis]) -> list[str]:
    """The swept keys whose values are not all numbers (an activation, a scheme)."""
    return [a.key for a in axes if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in a.values)]


# what a run's evaluation measures: final_metrics.* and initial_metrics.* are these
METRICS = tuple(f"{split}_{what}" for split in ("train", "test") for what in ("loss", "accuracy"))
# sweep.csv columns of text, which a heatmap cannot draw
TEXT_FIELDS = (*TEXT_COLUMNS, "error", "name", "device", "task",
               # sections and lists of summary.json: their numbers are dotted fields inside
               "final_metrics", "initial_metrics", "prediction", "precision", "clip", "pretrain",
               "over_run", "layers", "verdicts", "overrides", "first_nonfinite",
               *(f"first_nonfinite.{k}" for k in ("what", "layer", "module", "direction",
                                                  "value", "passed_on")))


def field_problem(field: str, keys: list[str], plot: bool = False,
                  text_keys: list[str] | None = None) -> str | None:
    """Why `field` is no column of sweep.csv (None if it is): a swept key, one of ROW_KEYS, or
    a summary field (dotted for nested ones, as `expect:` names them; under final_metrics and
    initial_metrics one of METRICS). With `plot`, also why a heatmap cannot draw it: text (a
    TEXT_FIELDS field, or one of `text_keys`, swept keys whose values are not numbers)."""
    head, _, rest = field.partition(".")
    if plot and (field in TEXT_FIELDS or field in (text_keys or [])):
        return f"{field!r} is not a number: a heatmap needs a numeric field, such as " \
               "final_metrics.test_accuracy, final_loss or grad_ratio_init"
    if head in ("final_metrics", "initial_metrics") and field not in keys:
        if rest in METRICS:
            return None
        return f"{field!r} is not a column of sweep.csv" \
               f"{did_you_mean(field, [f'{head}.{m}' for m in METRICS])}: {head}.KEY with KEY one of " \
               f"{', '.join(METRICS)}"
    if field in keys or field in ROW_KEYS or head in SUMMARY_FIELDS:
        return None
    known = [*keys, *ROW_KEYS, *SUMMARY_FIELDS, "final_metrics.test_accuracy",
             "final_metrics.test_loss"]
    return f"{field!r} is not a column of sweep.csv{did_you_mean(field, known)}: a swept key, " \
           "a summary field (final_metrics.test_accuracy, grad_ratio_init, ...) or " \
           "depth_per_xi, prediction.chi1, ..."


def check_claim_specs(claims: Any, source: str) -> list[dict[str, Any]]:
    """`sweep.expect`: a list of claims, each `{claim: text, where: {KEY: cond}, every: {KEY:
    cond}}` or with `any_of: [{KEY: cond}, ...]` instead of `every`; a cond is a literal or a
    `{min, max}` range, as in a config's `expect:`."""
    if claims is None:
        return []
    if not isinstance(claims, list):
        raise ConfigError(source, [("sweep.expect", "must be a list of claims")])
    problems = []
    for i, c in enumerate(claims):
        at = f"sweep.expect.{i}"
        if not isinstance(c, dict):
            problems.append((at, "a claim is a mapping: claim, where, every (or any_of)"))
            continue
        problems += [(f"{at}.{k}", f"unknown key; allowed: {', '.join(CLAIM_KEYS)}")
                     for k in c if k not in CLAIM_KEYS]
        if not isinstance(c.get("where"), dict) or not c["where"]:
            problems.append((f"{at}.where", "which rows the claim is about: {KEY: condition}"))
        if ("every" in c) == ("any_of" in c):
            problems.append((at, "give exactly one of every (a mapping) or any_of (a list)"))
        elif "every" in c and (not isinstance(c["every"], dict) or not c["every"]):
            problems.append((f"{at}.every", "a mapping {KEY: condition}"))
        elif "any_of" in c and (not isinstance(c["any_of"], list) or not c["any_of"] or
                                not all(isinstance(a, dict) and a for a in c["any_of"])):
            problems.append((f"{at}.any_of", "a list of mappings {KEY: condition}"))
        for part in ("where", "every"):
            for key, cond in (c.get(part) or {}).items() if isinstance(c.get(part), dict) else ():
                problems += _condition_problems(f"{at}.{part}.{key}", cond)
    if problems:
        raise ConfigError(source, problems)
    return claims


def _condition_problems(at: str, cond: Any) -> list[tuple[str, str]]:
    if isinstance(cond, dict):
        bad = [k for k in cond if k not in ("min", "max")]
        if bad or not cond:
            return [(at, "a range is {min: x}, {max: y} or both")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cond.values()):
            return [(at, "a range's bounds are numbers")]
    return []


@dataclass
class ClaimResult:
    claim: str
    ok: bool
    rows: int  # the rows (point × seed) the claim is about
    failures: list[str]  # one line per row that broke it (at most a few)

    def as_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "ok": self.ok, "rows": self.rows, "failures": self.failures}


def _row_holds(row: dict[str, Any], conditions: dict[str, Any]) -> bool:
    return all(holds(wanted, row.get(key, MISSING) if row.get(key) is not None else MISSING)
               for key, wanted in conditions.items())


def _describe(conditions: dict[str, Any]) -> str:
    return " and ".join(f"{k} {describe_wanted(v)}" for k, v in conditions.items())


def check_claims(claims: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[ClaimResult]:
    """Each claim over the sweep.csv rows its `where` selects (every seed of every point): it
    holds when every such row meets `every` (or one of `any_of`), and at least one row is
    selected (a claim about no point checks nothing, so it fails)."""
    results = []
    for c in claims:
        where = c["where"]
        chosen = [r for r in rows if _row_holds(r, where)]
        alternatives = c.get("any_of") or [c["every"]]
        broken = [r for r in chosen if not any(_row_holds(r, a) for a in alternatives)]
        text = c.get("claim") or f"where {_describe(where)}: " + \
            " or ".join(_describe(a) for a in alternatives)
        failures = []
        for r in broken[:5]:
            shown = ", ".join(f"{k} {_measured(r.get(k))}" for a in alternatives for k in a)
            failures.append(f"{r['variant']} seed {r['seed']}: {shown} ({r.get('status')})")
        if len(broken) > 5:
            failures.append(f"… and {len(broken) - 5} more")
        if not chosen:
            failures.append(f"no point has {_describe(where)}")
        results.append(ClaimResult(str(text), bool(chosen) and not broken, len(chosen),
                                   failures))
    return results


def _measured(value: Any) -> str:
    if value is None:
        return "missing"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- running it


@dataclass
class SweepOutcome:
    record: Path
    rows: list[dict[str, Any]]
    variants: list[Any]  # compare.Variant, one per point
    claims: list[ClaimResult]
    stopped: bool


def new_sweep_dir(out: Path, name: str) -> Path:
    try:
        return unique_dir(Path(out), f"sweep-{name}-{utc_stamp()}")
    except OSError as e:
        raise RecordWriteError(Path(out), cause(e), what="sweep record under") from None


def write_points(record: Path, plan: Plan) -> list[Path]:
    """configs/NAME.yaml for every point: the base with its values, runnable with `gradlab run`."""
    folder = record / "configs"
    folder.mkdir(exist_ok=True)
    files = []
    for p in plan.points:
        header = (f"# {p.name}: {plan.source} with "
                  + " ".join(f"--set {k}={_show(v)}" for k, v in p.values.items()) + "\n")
        target = folder / f"{p.name}.yaml"
        write_atomic(target, header + yaml.safe_dump(p.raw, sort_keys=False))
        files.append(target)
    return files


def sweep_json(plan: Plan, record: Path, status: str,
               claims: list[ClaimResult] | None = None) -> dict[str, Any]:
    return {
        "kind": "sweep", "name": plan.name, "status": status,
        "config": str(plan.source), "overrides": plan.overrides, "seeds": plan.seeds,
        "grid": [{"key": a.key, "spec": a.spec, "values": a.values} for a in plan.axes],
        "points": [{"name": p.name, "values": p.values, "config": f"configs/{p.name}.yaml",
                    "run": f"variants/{p.name}"} for p in plan.points],
        "plot": plan.plot, "expect": plan.claims,
        "claims": [c.as_dict() for c in claims or []],
    }


def sweep_rows(plan: Plan, variants: list[Any]) -> list[dict[str, Any]]:
    """sweep.csv's rows: one per point and seed (a point that never ran: one row, its status)."""
    rows = []
    for p, v in zip(plan.points, variants):
        members = v.members or ([v] if v.config is not None else [])
        if not members:
            rows.append(table_row(p.name, None, p.values, v.status, None, ""))
        for m in members:
            summary = m.record.summary if m.record else None
            seed = m.seed if m.seed is not None else (m.config.seed if m.config else None)
            rows.append(table_row(p.name, seed, p.values, m.status, summary,
                                  str(m.run_dir) if m.run_dir else ""))
    return rows


def run_sweep(plan: Plan, out: Path, jobs: int | None = None, reuse: bool = False,
              on_done: Callable[[Any], None] | None = None,
              on_plan: Callable[[int], None] | None = None, cluster: Any = None) -> SweepOutcome:
    """Write the points into a new sweep record, run them through `compare`, and complete the
    record: sweep.csv, sweep.json (with the claims checked) and variants/ links."""
    from gradlab import compare as comparing  # torch: only once the plan is checked

    record = new_sweep_dir(out, plan.name)
    try:
        files = write_points(record, plan)
        write_sweep(record, sweep_json(plan, record, "running"))
    except OSError as e:
        raise RecordWriteError(record, cause(e), what="sweep record") from None
    try:
        variants = comparing.compare(files, out, jobs=jobs, reuse=reuse, plots=False,
                                     on_done=on_done, pairs=False, on_plan=on_plan,
                                     cluster=cluster)
    except KeyboardInterrupt:  # while the points were checked: nothing ran
        write_sweep(record, sweep_json(plan, record, "interrupted"))
        raise
    stopped = any(v.interrupted for v in variants)
    rows = sweep_rows(plan, variants)
    claims = check_claims(plan.claims, rows)
    try:
        write_table(record, rows, plan.keys)
        link_variants(record, {p.name: v.run_dir for p, v in zip(plan.points, variants)
                               if v.run_dir is not None})
        write_sweep(record, sweep_json(plan, record, "interrupted" if stopped else "completed",
                                       claims))
    except OSError as e:
        raise RecordWriteError(record, cause(e), what="sweep record") from None
    return SweepOutcome(record, rows, variants, claims, stopped)
