"""Every report is complete and readable at 80 columns and uses the width when there is more.

The run report (a 51-layer net, a pretrained net, a recurrent net with its through-time table),
the run listing and the comparison table are rendered at 80 and at 120 columns: no line is
wider than the terminal, every number the table holds is printed whole (the set of number
tokens on a row is the row's numbers formatted as the table formats them), names stay pairwise
distinct and each still points to its own name, and at 120 columns more is shown than at 80.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config
from rich.console import Console

from gradlab.config import config_from_dict
from gradlab.record.reader import read_record
from gradlab.render.compare_table import comparison_table
from gradlab.render.fix_table import fix_table
from gradlab.render.listing import run_list
from gradlab.render.report import run_report
from gradlab.render.style import num, pct, short, shorten_names
from gradlab.runner import run_config

WIDTHS = (80, 120)
# a number as the tables print it: 300, 0.078, 2.6e4, 4.6e-11, 1.23e-5, 15%, inf, -inf
NUMBER = re.compile(r"-?(\d+(\.\d+)?(e-?\d+)?%?|inf)")


def render(renderable: Any, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text().splitlines()


def numbers(line: str) -> list[str]:
    """The number tokens of a table line, in order."""
    return [t for t in line.split() if NUMBER.fullmatch(t)]


def assert_fits(lines: list[str], width: int) -> None:
    assert max(len(line) for line in lines) <= width, "\n".join(lines)


def assert_no_cut_number(lines: list[str]) -> None:
    # an ellipsis after a digit, a decimal point or an exponent is a number cut short
    for line in lines:
        assert not re.search(r"\d(\.\d*)?(e[+-]?\d*)?…", line), line


def table_body(lines: list[str], after: str, until: str = "\0") -> list[str]:
    """The lines of the first table after the line containing `after`: from its header rule
    to the first line that is blank or starts with `until`."""
    start = next(i for i, line in enumerate(lines) if after in line)
    rule = next(i for i in range(start, len(lines)) if lines[i].lstrip().startswith("───"))
    body = []
    for line in lines[rule + 1:]:
        if not line.strip() or line.startswith(until):
            break
        body.append(line)
    return body


# ------------------------------------------------------------------ run reports

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("width") / "runs"
    made = {
        # 50 sigmoid layers: gradients far below float32's normal range at the input side
        "deep": run_config(tiny_config(name="deep_sigmoid_with_a_long_name",
                                       model={"depth": 50, "width": 8, "activation": "sigmoid",
                                              "init": "default"},
                                       train={"steps": 3, "eval_every": 3}), out).path,
        "pretrain": run_config(tiny_config(name="pretrain_sigmoid",
                                           model={"activation": "sigmoid", "depth": 3},
                                           pretrain={"steps_per_layer": 20, "lr": 0.02,
                                                     "batch_size": 16}), out).path,
        "recurrent": run_config(config_from_dict({
            "name": "digits_sequence_lstm", "seed": 0, "device": "cpu",
            "data": {"kind": "adding", "n_samples": 64, "length": 7},
            "model": {"kind": "lstm", "depth": 1, "width": 8},
            "train": {"steps": 6, "batch_size": 16, "optimizer": "adam", "lr": 0.01,
                      "eval_every": 3},
            "probe": {"every": 2}}, "seq.yaml"), out).path,
    }
    # the same deep record as a run with denormals flushed
    flushed = out / "deep_flushed" / "20250101T000000Z"
    shutil.copytree(made["deep"], flushed)
    summary = json.loads((flushed / "summary.json").read_text())
    summary.update(flush_denormal=True, flushed_zero_layers=3, denormal_layers=None)
    (flushed / "summary.json").write_text(json.dumps(summary))
    made["flushed"] = flushed
    return made


def layer_numbers(layer: dict[str, Any], unit: str) -> set[str]:
    """Every number the layer table may print for a layer, formatted as it formats them."""
    shown = {short(layer[when].get(key)) for when in ("init", "final")
             for key in ("grad_norm", "delta_norm", "grad_rms", "update_ratio", "weight_norm",
                         "act_mean", "act_std")}
    return shown | {pct(layer["final"].get(unit))}


@pytest.mark.parametrize("kind", ["deep", "pretrain", "recurrent"])
def test_the_run_report_fits_and_prints_every_number_whole(runs, kind):
    record = read_record(runs[kind])
    layers = record.summary["layers"]
    unit = "act_saturated" if record.config["model"]["activation"] == "sigmoid" else "act_dead"
    counts = {}
    for width in WIDTHS:
        lines = render(run_report(record), width)
        assert_fits(lines, width)
        assert_no_cut_number(lines)
        assert "…" not in "\n".join(lines)
        # the three boxes (header, loss, verdict) are one width: the terminal's
        boxes = {len(line) for line in lines if line.startswith("╭")}
        assert boxes == {width}, boxes
        body = table_body(lines, "per-layer statistics")
        rows = [line.split() for line in body
                if line.split()[0].isdigit() and "layers shown" not in line]
        assert len(rows) == min(len(layers), 12)
        names = [r[1] for r in rows]
        assert len(set(names)) == len(names)
        per_row = []
        for r in rows:
            layer = layers[int(r[0])]
            assert r[1] == layer["name"]
            printed = numbers(" ".join(r[2:]))  # a shape (8×8) is not a number token
            assert set(printed) <= layer_numbers(layer, unit), (printed, layer)
            # the gradient norms at init and at the end are always there, whole
            grads = [short(layer[w]["grad_norm"]) for w in ("init", "final")]
            assert printed[:2] == grads, (r, grads)
            per_row.append(len(printed))
        counts[width] = per_row
        if kind == "deep":  # on one line, not wrapped at the table's width
            assert any(f"{len(rows)} of 51 layers shown; --all-layers for every one" in line
                       for line in lines), lines
    if kind == "deep":  # the extra columns (‖∂L/∂z‖, weight norm, act mean) come at 120
        assert all(a < b for a, b in zip(counts[80], counts[120])), counts


@pytest.mark.parametrize("kind", ["deep", "pretrain"])
def test_the_header_keeps_each_metric_with_its_number(runs, kind):
    record = read_record(runs[kind])
    s = record.summary
    for width in WIDTHS:
        text = "\n".join(render(run_report(record), width))
        for key, value in s["final_metrics"].items():
            assert f"{key} {num(value)}" in text
        assert f"{s['steps_done']}/{s['steps_planned']} steps in {num(s['seconds'])} s" in text
        assert f"({num(s['steps_per_second'])} steps/s)" in text


def test_the_pretraining_table_fits_with_every_number(runs):
    record = read_record(runs["pretrain"])
    pretrain = record.summary["pretrain"]["layers"]
    for width in WIDTHS:
        lines = render(run_report(record), width)
        body = table_body(lines, "layer-wise pretraining", until="autoencoder")
        rows = [line.split() for line in body]
        assert [r[0] for r in rows] == [p["name"] for p in pretrain]
        for r, p in zip(rows, pretrain):
            unexplained = p["loss_end"] / p["input_variance"]
            assert r[1:7] == [str(p["steps"]), short(p["loss_start"], 3), short(p["loss_end"], 3),
                              short(p["input_variance"], 3), pct(unexplained), num(p["seconds"])]
            assert r[7] == p["status"]
        text = "\n".join(lines)
        assert "reconstruction" in text and "loss" in text


def test_the_through_time_table_prints_every_time_step(runs):
    record = read_record(runs["recurrent"])
    init, final = record.summary["time_grads_init"], record.summary["time_grads_final"]
    for width in WIDTHS:
        lines = render(run_report(record), width)
        body = table_body(lines, "gradient through time")
        rows = [line.split() for line in body]
        assert rows == [[str(t + 1), num(init[t]), num(final[t])] for t in range(len(init))]


def test_the_denormal_lines_read_plainly_and_say_what_the_run_did(runs):
    deep = read_record(runs["deep"])
    denormal = deep.summary["denormal_layers"]
    assert denormal > 1  # 50 sigmoid layers: the first layers' gradients are all denormal
    for width in WIDTHS:
        flushed = "\n".join(render(run_report(read_record(runs["flushed"])), width))
        plain = " ".join(flushed.replace("│", " ").split())
        assert ("flush_denormal is on: numbers smaller than 1.2e-38 were rounded to 0, so a "
                "gradient that small shows as exactly 0; at the first step 3 layers' gradients "
                "were exactly 0") in plain
        assert "denormal (every entry" not in plain
        kept = " ".join("\n".join(render(run_report(deep), width)).replace("│", " ").split())
        assert (f"at the first step {denormal} layers' gradients were denormal (every entry "
                "below 1.2e-38): kept, as IEEE arithmetic has them, but some CPUs compute such "
                "numbers several times slower; flush_denormal: true rounds them to 0") in kept
        assert "flush_denormal is on" not in kept


def test_wrapped_remedies_keep_their_indent(runs):
    lines = render(run_report(read_record(runs["deep"])), 80)
    start = next(i for i, line in enumerate(lines) if "─ verdict " in line)
    inside = [line[2:-2] for line in lines[start + 1:] if line.startswith("│")]
    assert any(line.startswith("  → ") for line in inside)
    for line in inside:  # a bullet, a remedy, or a line continuing one under its text
        assert (not line.strip() or line.startswith(("•   ", "  → "))
                or line.startswith("    ") and line[4] != " "), line


# ------------------------------------------------------------------ gradlab runs

def test_the_run_list_fits_with_every_path_whole(runs, tmp_path):
    root = tmp_path / "listing"
    names = ["digits_sequence_lstm_with_a_long_name", "digits_sequence_rnn_with_a_long_name",
             "deep_sigmoid", "deep_sigmoid_bn"]
    paths = []
    for i, name in enumerate(names):
        for j, kind in enumerate(("deep", "recurrent")):
            path = root / name / f"2025010{j + 1}T0{i}0000Z"
            shutil.copytree(runs[kind], path)
            paths.append(path)
    shown = {}
    for width in WIDTHS:
        lines = render(run_list(root), width)
        assert_fits(lines, width)
        assert_no_cut_number(lines)
        text = "\n".join(lines)
        assert "…" not in text
        for path in paths:
            run = path.relative_to(root).as_posix()
            name, stamp = run.split("/")
            whole = any(line.startswith(run + " ") for line in lines)
            stacked = any(line.startswith(name + "/ ") and lines[k + 1].startswith(stamp)
                          for k, line in enumerate(lines[:-1]))
            assert whole or stacked, (run, text)
            s = read_record(path).summary
            row = next(k for k, line in enumerate(lines) if line.startswith(run + " ")
                       or line.startswith(name + "/ ") and lines[k + 1].startswith(stamp))
            cells = " ".join(lines[row:row + 2])
            assert f"{s['steps_done']}/{s['steps_planned']}" in cells.split()
            assert short(s["final_loss"], 3) in cells.split()
            for v in s["verdicts"]:  # the verdicts wrap between words, never inside one
                assert v["kind"] in text
        shown[width] = "started" in text.split("───")[0]  # in the header
    assert shown == {80: False, 120: True}


# ------------------------------------------------------------------ gradlab compare

NAMES = ["clip_demo", "clip_norm", "clip_value", "deep_elu", "deep_leaky_relu", "deep_prelu",
         "deep_relu", "deep_relu_bn", "deep_relu_he", "deep_residual", "deep_sigmoid",
         "deep_sigmoid_bn", "deep_tanh", "digits_relu_he_deep", "digits_sequence_lstm",
         "digits_sequence_rnn", "digits_sigmoid_deep", "explode_lr", "gru_adding",
         "init_constant", "init_he_relu", "init_large", "init_xavier_tanh", "l2", "l2_off",
         "lr_decay", "lstm_adding", "optim_adam", "optim_rmsprop", "optim_sgd",
         "pretrain_sigmoid", "rnn_adding", "rnn_clip", "rnn_explode", "scratch_sigmoid"]
VERDICTS = ["ok", "vanishing", "not_learning", "exploding", "vanishing_time", "saturated"]
STATUSES = {"explode_lr": "diverged", "init_large": "diverged", "rnn_explode": "diverged",
            "gru_adding": "interrupted", "l2_off": "failed"}


def compare_rows(long: bool = False) -> list[dict[str, Any]]:
    """35 rows like `gradlab compare configs/` makes, values across 60 orders of magnitude;
    with `long`, names that share long starts and ends."""
    rows = []
    for i, name in enumerate(NAMES):
        status = STATUSES.get(name, "completed")
        diverged = status == "diverged"
        rows.append({
            "variant": f"{name}_with_a_much_longer_suffix" if long else name,
            "status": status,
            "steps": 1000 if "adding" in name else (i + 1) * 10 if diverged else 300,
            "final_loss": None if diverged else 10.0 ** (-i) * 2.31,
            "test_metric": None if diverged else 0.9 - i / 100,
            "grad_ratio_init": 1.36e-42 if name == "deep_sigmoid" else 2.6e4 / 10 ** i,
            "grad_ratio_final": 4.6e-11 * 7 ** i,
            "weakest_grad": 3.0e15 if name == "init_large" else 1.9e-20 * 3 ** i,
            "verdict": "diverged" if diverged else "failed" if status == "failed"
            else VERDICTS[i % len(VERDICTS)],
            "steps_per_second": 12.3 * (i + 1),
            "expect": "FAILED" if i % 7 == 3 else "held" if i % 5 else "",
            "problems": "NaN/Inf in loss at step 2" if diverged else "",
        })
    return rows


def rate(x: float) -> str:
    return f"{x:.0f}"


def compare_lines(rows: list[dict[str, Any]], width: int, claims: bool) -> list[list[str]]:
    """Each row of the printed table as its tokens: the name (put together again where it is
    stacked over lines), then the cells of the row's first line."""
    lines = render(comparison_table(rows, show_claims=claims), width)
    assert_fits(lines, width)
    assert_no_cut_number(lines)
    body = table_body(lines, "comparison", until="ratio: ")
    table: list[list[str]] = []
    for line in body:
        if numbers(line):  # a row's first line: its numbers
            table.append(line.split())
        elif not line.startswith(" "):  # more of a stacked name (a verdict below is indented)
            table[-1][0] += line.split()[0]
    assert len(table) == len(rows)
    return table


@pytest.mark.parametrize("long", [False, True], ids=["config_names", "long_names"])
@pytest.mark.parametrize("claims", [False, True], ids=["plain", "check"])
def test_the_comparison_fits_with_every_number_and_distinct_names(long, claims):
    rows = compare_rows(long)
    shown = {}
    for width in WIDTHS:
        table = compare_lines(rows, width, claims)
        cells = [line[0] for line in table]
        assert len(set(cells)) == len(cells), cells  # no two names alike
        for cell, r, line in zip(cells, rows, table):
            head, dots, tail = cell.partition("…")
            # a shortened name still points to its own name, and to no other
            matches = [x["variant"] for x in rows if x["variant"].startswith(head)
                       and x["variant"].endswith(tail)] if dots else [cell]
            assert matches == [r["variant"]], (cell, matches)
            expected = [num(r["steps"])] + [
                short(r[k]) for k in ("final_loss", "test_metric", "grad_ratio_init",
                                      "grad_ratio_final", "weakest_grad")]
            expected = [x for x in expected if x != "–"]
            printed = numbers(" ".join(line[1:]))
            # steps/s, at the end, when there is room for it
            assert printed in (expected, expected + [rate(r["steps_per_second"])]), (line, r)
            assert all("…" not in t for t in line[1:])
            if claims:
                assert line[-1] == {"held": "held", "FAILED": "FAILED"}.get(r["expect"], "–")
            else:
                assert "held" not in line and "FAILED" not in line
        shown[width] = sum(len(numbers(" ".join(line[1:]))) for line in table)
        if not long:  # the configs' own names all fit at 80 and at 120
            assert cells == [r["variant"] for r in rows] or claims and width == 80
    assert shown[120] > shown[80], shown  # steps/s at 120


def test_the_fix_table_fits_with_every_setting_and_verdict_whole():
    """rnn_clip's remedies: the longest --set token and two-word verdict names beside it."""
    def row(rank, overrides, verdict, metric, ratio):
        return {"rank": rank, "overrides": overrides, "status": "completed", "test_metric": metric,
                "grad_ratio_final": ratio, "verdict": verdict, "metric": "test_loss",
                "beats_baseline": False}

    rows = [row(1, "model.recurrent_init.gain=1.0", "vanishing_time, not_learning", 0.154, 0.41),
            row(2, "train.lr=0.001 train.clip.max_norm=1.0",
                "exploding, exploding_time, not_learning", 2080.0, 0.26)]
    original = {**row(None, "(as given)", "exploding, exploding_time, not_learning", 0.517, 21),
                "baseline": 0.155}
    for width in WIDTHS:
        lines = render(fix_table(rows, original, "rnn_clip.yaml"), width)
        assert max(len(line.rstrip()) for line in lines) <= width
        tokens = " ".join(lines).split()
        for r in [*rows, original]:
            for word in [*r["overrides"].split(), *r["verdict"].split(", ")]:
                assert word.strip("()") in " ".join(tokens), (width, word)
        assert tokens.count("exploding_time") == 2 and tokens.count("vanishing_time") == 1
        assert {"0.154", "2.08e+03", "0.517"} <= set(tokens)


def test_claims_show_only_when_asked():
    rows = compare_rows()
    for width in WIDTHS:
        plain = "\n".join(render(comparison_table(rows), width))
        assert "claims" not in plain and "held" not in plain and "FAILED" not in plain
        checked = "\n".join(render(comparison_table(rows, show_claims=True), width))
        assert "claims" in checked and "held" in checked and "FAILED" in checked


def test_the_status_of_a_run_that_did_not_complete_is_always_shown():
    rows = compare_rows()
    for width in WIDTHS:
        text = "\n".join(render(comparison_table(rows), width))
        for status in ("diverged", "interrupted", "failed"):
            assert status in text
        # at 120 a column of its own; at 80 in the verdict column, for runs that did not finish
        assert ("status" in text.split("───")[0]) == (width == 120)


def test_names_are_shortened_in_the_middle_and_kept_apart():
    names = ["digits_sequence_lstm", "digits_sequence_rnn", "deep_sigmoid", "deep_sigmoid_bn",
             "digits_relu_he_deep", "digits_sigmoid_deep"]
    for width in range(8, 21):
        short_names = shorten_names(names, width)
        assert short_names is not None and len(set(short_names)) == len(names)
        for s, name in zip(short_names, names):
            assert len(s) <= width
            head, dots, tail = s.partition("…")
            assert s == name if not dots else name.startswith(head) and name.endswith(tail)
    assert shorten_names(["deep_sigmoid", "deep_sigmoid_bn"], 13) == ["deep_sigmoid",
                                                                       "deep_s…oid_bn"]
