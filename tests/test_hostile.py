"""Hostile and odd input: configs from strangers and data files that are not what they seem.
Each is refused with exit 2 and one clear message, before it costs memory or a traceback, and
no message quotes a data file's content."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny
from typer.testing import CliRunner

from gradlab.build.data import load_data
from gradlab.cli import app
from gradlab.config import ConfigError, config_from_dict, load_config


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "120"})


def refused(path: Path, *fragments: str) -> None:
    for command in ("validate", "run"):
        result = invoke(command, str(path), "--out", str(path.parent / "runs")) \
            if command == "run" else invoke(command, str(path))
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output
        for fragment in fragments:
            assert fragment in result.output, (command, fragment, result.output)
        assert len(result.output) < 2000  # one message, not the value's whole repr


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1},"
              f" *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    lines += ["name: *a8", "data: {kind: teacher}"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    refused(path, "alias bomb")


def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("name: x\ndata: {kind: teacher}\nexpect: " + "[" * 10_000 + "]" * 10_000 + "\n")
    refused(path, "nested more than 64 levels deep")


def test_64_levels_of_nesting_are_read_and_65_refused(tmp_path: Path) -> None:
    """The top-level mapping is the first level: 63 lists inside it are read (and then refused
    by the schema, for what they hold), 64 are too deep."""
    for lists, too_deep in ((63, False), (64, True)):
        path = tmp_path / f"nested{lists}.yaml"
        path.write_text("name: x\ndata: {kind: teacher}\nexpect: " + "[" * lists + "]" * lists
                        + "\n")
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert ("nested more than 64 levels deep" in str(e.value)) == too_deep, str(e.value)


@pytest.mark.parametrize("value", ["&x [*x]", "&x {a: *x}", "&x [1, [2, *x]]"])
def test_an_anchor_aliased_inside_itself_is_refused_by_name(tmp_path: Path, value: str) -> None:
    """YAML lets an anchor's own value alias it: a value that contains itself, which no
    config can mean."""
    path = tmp_path / "recursive.yaml"
    path.write_text(f"name: x\ndata: {{kind: teacher}}\nexpect: {value}\n")
    refused(path, "line 3: an anchor is aliased inside its own value")


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: x\ndata: {kind: teacher}\n" + "# padding\n" * 200_000)
    refused(path, "MiB; a config is at most 1 MiB")


def test_an_error_quotes_a_long_value_shortly(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(tiny(model={"depth": "x" * 100_000})))
    refused(path, "model.depth: must be a whole number, got 'xxxx")


@pytest.mark.parametrize(("override", "where"), [
    ("train.lr=.inf", "train.lr"), ("data.noise=.nan", "data.noise"),
    ("model.init={scheme: normal, std: .inf}", "model.init.std"),
    ("train.steps=1000000000000", "train.steps: must be ≤ 100000000"),
])
def test_every_number_is_finite_and_bounded(override: str, where: str, write_yaml) -> None:
    path = write_yaml(tiny())
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(path, [override])


def npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "table.npz"
    np.savez(path, **arrays)
    return path


def file_config(path: Path) -> dict:
    raw = tiny(train={"steps": 2, "batch_size": 4})
    raw["data"] = {"kind": "file", "path": str(path), "target": "y"}
    return raw


@pytest.mark.parametrize("x", [np.zeros((50, 3)), np.zeros((200, 3)), np.zeros(50),
                               np.zeros((100, 2))[None]], ids=["half", "double", "1d", "3d"])
def test_npz_arrays_must_agree_with_the_target_in_length(x: np.ndarray, tmp_path: Path) -> None:
    cfg = config_from_dict(file_config(npz(tmp_path, x=x, y=np.arange(100.0))))
    with pytest.raises(ConfigError, match=r"array 'x' has shape .* but 'y' has \(100,\)"):
        load_data(cfg.data, cfg.seed)


def test_an_npz_of_agreeing_arrays_loads(tmp_path: Path) -> None:
    cfg = config_from_dict(file_config(npz(tmp_path, x=np.ones((20, 2, 3)), y=np.arange(20.0))))
    data = load_data(cfg.data, cfg.seed)
    assert data.n_in == 6 and len(data.x_train) + len(data.x_test) == 20


def csv_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "table.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


ROWS = "".join(f"{i},{i % 3},{2 * i}\n" for i in range(10))


@pytest.mark.parametrize(("content", "fragment"), [
    ("a,b,y\n", "has a header row but no data rows"),
    ("a,b,y\n" + "1," + "9" * 200_000 + ",2\n" + ROWS, "cannot read"),
    ("a,b,y\n1,root:x:0:0:root:/root:/bin/bash,3\n" + ROWS, "column 'b' holds a non-numeric"),
    ("", "is empty"),
], ids=["header-only", "huge-field", "non-numeric", "empty"])
def test_odd_csv_files_are_clear_errors(content: str, fragment: str, tmp_path: Path) -> None:
    cfg = config_from_dict(file_config(csv_file(tmp_path, content)))
    with pytest.raises(ConfigError) as err:
        load_data(cfg.data, cfg.seed)
    assert fragment in str(err.value)
    assert "root:/root" not in str(err.value) and "999999" not in str(err.value)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "\ufeffa,b,y\n" + ROWS)
    raw = file_config(path)
    raw["data"]["target"] = "a"  # the first column, where the BOM sits
    cfg = config_from_dict(raw)
    data = load_data(cfg.data, cfg.seed)
    assert data.n_in == 2 and not math.isnan(float(data.x_train.sum()))


def test_validate_checks_the_data_file_as_run_does(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,b,y\n1,oops,3\n" + ROWS)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(file_config(path)))
    result = invoke("validate", str(config))
    assert result.exit_code == 2, result.output
    assert "column 'b' holds a non-numeric value in data row 1" in result.output


def test_an_npz_header_claiming_a_huge_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    import zipfile

    path = npz(tmp_path, x=np.zeros((10, 2)), y=np.arange(10.0))
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "x.npy":  # the same bytes, a header claiming 10^12 rows
                data = data.replace(b"(10, 2)", b"(1000000000000, 2)")
            dst.writestr(item, data)
    cfg = config_from_dict(file_config(forged))
    with pytest.raises(ConfigError, match=r"array 'x' claims shape \(1000000000000, 2\)"):
        load_data(cfg.data, cfg.seed)


def test_a_file_that_is_not_a_table_does_not_have_its_first_line_echoed(tmp_path: Path) -> None:
    system = tmp_path / "passwd"
    system.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n")
    link = tmp_path / "table.csv"
    link.symlink_to(system)
    cfg = config_from_dict(file_config(link))
    with pytest.raises(ConfigError) as err:
        load_data(cfg.data, cfg.seed)
    assert "root:x" not in str(err.value) and "not shown" in str(err.value)
