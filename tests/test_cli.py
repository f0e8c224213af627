"""The command line: `run` (report, --json, overrides, --all-layers, --device), `validate`,
`python -m gradlab`, and help text on every command and option.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
import yaml
from conftest import CONFIGS, ROOT, tiny
from typer.testing import CliRunner

from gradlab.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120"})


@pytest.fixture
def tiny_yaml(write_yaml) -> Path:
    return write_yaml(tiny(), "tiny.yaml")


def test_run_prints_the_report_and_writes_the_record(tiny_yaml: Path, tmp_path: Path) -> None:
    result = invoke("run", tiny_yaml, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    out = result.stdout
    assert "tiny  completed  10/10 steps" in out
    for name in ("fc1", "fc4", "head", "per-layer statistics", "saturated", "loss", "verdict"):
        assert name in out
    assert run_dir.name in out  # the record's directory (the panel may wrap a long path)
    assert summary["verdicts"][0]["message"].split(": ")[0] in out


def test_run_json_prints_exactly_summary_json(tiny_yaml: Path, tmp_path: Path) -> None:
    result = invoke("run", tiny_yaml, "--out", tmp_path / "runs", "--json", "--no-plots")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # nothing else on stdout
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert printed == json.loads((run_dir / "summary.json").read_text())
    assert printed["status"] == "completed" and printed["steps_done"] == 10


def test_options_override_the_config(tiny_yaml: Path, tmp_path: Path) -> None:
    result = invoke("run", tiny_yaml, "--out", tmp_path / "out", "--json", "--quiet",
                    "--steps", "4", "--seed", "7", "--device", "cpu",
                    "--set", "model.depth=2", "--set", "name=other", "--no-plots")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["name"] == "other" and summary["steps_done"] == 4
    assert summary["device"] == "cpu" and len(summary["layers"]) == 3
    (run_dir,) = (tmp_path / "out" / "other").iterdir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["seed"], config["train"]["steps"], config["model"]["depth"]) == (7, 4, 2)


def test_a_deep_table_is_abridged_unless_all_layers(write_yaml, tmp_path: Path) -> None:
    path = write_yaml(tiny(model={"depth": 30, "width": 4}, train={"steps": 1}), "deep.yaml")
    short = invoke("run", path, "--out", tmp_path / "runs", "--no-plots")
    full = invoke("run", path, "--out", tmp_path / "runs", "--all-layers", "--no-plots")
    assert short.exit_code == full.exit_code == 0
    assert "of 31 layers shown; --all-layers for every one" in short.stdout
    shown = [i for i in range(1, 31) if f" fc{i} " in short.stdout]
    assert shown[:3] == [1, 2, 3] and shown[-2:] == [29, 30] and len(shown) < 20
    assert all(f" fc{i} " in full.stdout for i in range(1, 31)) and "layers shown" not in full.stdout


def test_device_auto_picks_what_is_there(tiny_yaml: Path, tmp_path: Path) -> None:
    result = invoke("run", tiny_yaml, "--out", tmp_path / "runs", "--json", "--device", "auto",
                    "--no-plots")
    assert result.exit_code == 0, result.output
    device = json.loads(result.stdout)["device"]
    assert device.startswith("cuda") if torch.cuda.is_available() else device == "cpu"


def test_device_cuda_runs_there_or_is_a_clean_error(tiny_yaml: Path, tmp_path: Path) -> None:
    result = invoke("run", tiny_yaml, "--out", tmp_path / "runs", "--json", "--device", "cuda")
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["device"].startswith("cuda")
    else:
        assert result.exit_code == 2
        assert f"{tiny_yaml} (--device cuda): device: 'cuda' was asked for, but no CUDA device" \
            in result.stderr
        assert not (tmp_path / "runs").exists()


def test_validate_checks_files_and_directories(tiny_yaml: Path, write_yaml) -> None:
    ok = invoke("validate", ROOT / "configs", tiny_yaml)
    assert ok.exit_code == 0, ok.output
    assert f"{ROOT / 'configs' / 'deep_sigmoid.yaml'}: ok" in ok.stdout
    assert f"{tiny_yaml}: ok" in ok.stdout
    bad = write_yaml(tiny(model={"depth": -1}), "bad.yaml")
    mixed = invoke("validate", tiny_yaml, bad)
    assert mixed.exit_code == 2
    assert f"{tiny_yaml}: ok" in mixed.stdout
    assert f"{bad}: model.depth: must be ≥ 0, got -1" in mixed.stderr


def test_validate_refuses_a_bad_config_without_importing_torch(write_yaml) -> None:
    """The schema needs no torch; only the memory pre-flight of a valid config builds a model."""
    bad = write_yaml(tiny(model={"depth": -1}), "bad.yaml")
    code = ("import sys\nfrom gradlab.cli import main\nsys.argv = ['gradlab', 'validate', "
            f"{str(bad)!r}]\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    assert e.code == 2, e.code\nassert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "model.depth: must be ≥ 0, got -1" in done.stderr


def test_python_m_gradlab_works_like_gradlab(tiny_yaml: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "gradlab", "validate", str(tiny_yaml)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tiny_yaml}: ok"
    helped = subprocess.run([sys.executable, "-m", "gradlab", "--help"], capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "run" in helped.stdout and "validate" in helped.stdout


def _commands() -> dict[str, Any]:
    group = typer.main.get_command(app)
    return dict(group.commands)  # type: ignore[attr-defined]


def test_every_command_and_option_has_help_text() -> None:
    commands = _commands()
    assert {"run", "validate", "compare"} <= set(commands)
    missing = [f"{name} {param.name}" for name, cmd in commands.items() for param in cmd.params
               if not (getattr(param, "help", None) or "").strip()]
    assert missing == []
    assert all((cmd.help or "").strip() for cmd in commands.values())


@pytest.mark.parametrize("command", ["run", "validate", "compare"])
def test_help_of_each_command_lists_its_options(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for param in _commands()[command].params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                assert opt in result.stdout


def test_the_abridged_tables_note_is_never_wrapped_at_the_tables_width(tmp_path: Path) -> None:
    """explode_lr diverges at step 4 and its table at 80 columns is narrower than the note
    saying how many layers it shows: the note takes a line of its own, whole."""
    result = CliRunner().invoke(app, ["run", str(CONFIGS / "explode_lr.yaml"), "--out",
                                      str(tmp_path / "runs"), "--no-plots"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert any(line.strip() == "11 of 16 layers shown; --all-layers for every one"
               for line in result.stdout.splitlines()), result.stdout
