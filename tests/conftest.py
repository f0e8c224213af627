"""Shared helpers for the core tests: tiny configs, YAML files in tmp_path, one-call runs.

Tests train small networks for a handful of steps, so torch gets one thread: on a shared
2-core machine more threads only contend (a 50-layer net runs ~10x slower with two).

Scheduling (`pytest -n 2`, `make test`): unless `--dist` is given, the tests are handed out one
work unit at a time to whichever worker is free (`pytest_xdist_make_scheduler`): a test, or a
whole module or test function of `SHARED_FIXTURES`, so its module fixture runs once.
Units go out in collection order, which puts the modules of `SLOWEST_FIRST` first: the
real-process tests, which mostly wait on other processes, start at once and the quick unit
tests fill the end, so both workers finish together.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import procs
import pytest
import yaml

# Modules by the wall time they take, slowest first (real processes, then the runs and figures
# of module fixtures); every other module follows in its usual order.
SLOWEST_FIRST = [
    "test_signals.py", "test_cluster.py", "test_adapters.py", "test_interrupt.py", "test_disks.py",
    "test_compare.py", "test_examples.py", "test_configs.py", "test_corrupt.py",
    "test_layout.py", "test_cli.py", "test_figures_runs.py", "test_plots.py",
    "test_render_robust.py", "test_watch.py", "test_fix.py", "test_seeds.py", "test_sweep.py",
    "test_report.py", "test_hostile.py", "test_runner.py", "test_sequences.py",
]
# What shares a module-scoped fixture (real processes, several runs, a huge record) and so goes
# to one worker whole, for the fixture to run once: these modules, and these test functions
# (with all their parameters). Every other test is a unit of its own.
SHARED_FIXTURES = ["test_interrupt.py", "test_corrupt.py", "test_fix.py", "test_figures_runs.py",
                   "test_plots.py", "test_figures_compare.py", "test_render_width.py",
                   "test_signals.py::test_sigterm_and_sighup_stop_a_run_like_ctrl_c",
                   "test_layout.py::test_a_stage_imports_only_the_stages_before_it",
                   # one worker imports Lightning (~5 s), the other may take Hugging Face
                   "test_adapters.py::test_lightning_*", "test_adapters.py::test_hugging_face_*"]


def _work_unit(nodeid: str) -> str:
    """What one worker runs together: a module, or the functions matching an entry (a name or
    a `*` pattern), of SHARED_FIXTURES; else the test on its own."""
    path, _, test = nodeid.partition("::")
    module, function = Path(path).name, test.split("[")[0]
    if module in SHARED_FIXTURES:
        return path
    for entry in SHARED_FIXTURES:
        if fnmatch.fnmatchcase(f"{module}::{function}", entry):
            return f"{path}::{entry.partition('::')[2]}"
    return nodeid


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`pytest -n N` without a `--dist` of its own: work units (`_work_unit`) handed out one at
    a time, in collection order, to whichever worker is free. (xdist's `--dist loadgroup` cannot
    be used: with pytest 9 its `xdist_group` marks no longer reach the scheduler.)"""
    if config.getvalue("dist") != "load" or any(
            a.startswith("--dist") or a == "-d" for a in config.invocation_params.args):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    config.option.loadscopereorder = False  # keep the collection order: slowest first
    return ByWorkUnit(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread wherever tests run. The controller of `pytest -n N` runs none, and
    skips the import (two seconds of CPU the workers want at start)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return
    import torch

    torch.set_num_threads(1)


# Set in the child run of a disk test (`pytest_pyfunc_call`), which is root in its namespace.
IN_NAMESPACE = "GRADLAB_TESTS_IN_USER_NAMESPACE"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test that mounts a small tmpfs (test_disks.py's `disk` fixture: a disk that fills up or
    turns read-only) needs root. Run as another user, it runs again in a new user and mount
    namespace in which it is root (`unshare --user --map-root-user --mount`), and that run's
    outcome is this test's: it is never skipped. Without unprivileged user namespaces it fails,
    saying so."""
    if ("disk" not in pyfuncitem.fixturenames or os.geteuid() == 0
            or os.environ.get(IN_NAMESPACE)):
        return None
    base = tempfile.mkdtemp(prefix="gradlab-namespace-")
    command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest",
               "-q", "-p", "no:cacheprovider", f"--basetemp={base}/t", pyfuncitem.nodeid]
    try:
        done = subprocess.run(command, cwd=pyfuncitem.config.rootpath, capture_output=True,
                              text=True, env={**os.environ, IN_NAMESPACE: "1"}, timeout=600)
    except FileNotFoundError:
        pytest.fail("this test mounts a tmpfs: run it as root, or where `unshare` (util-linux) "
                    "can make a user namespace", pytrace=False)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if done.returncode != 0:
        pytest.fail(f"run as root in a user namespace ({' '.join(command[:4])}), it failed:\n"
                    f"{done.stdout[-4000:]}{done.stderr[-2000:]}", pytrace=False)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# A run that finishes in well under a second: 4 tanh layers of width 16 on 64 examples.
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "data": {"kind": "teacher", "n_samples": 64, "n_features": 8},
    "model": {"depth": 4, "width": 16, "activation": "tanh"},
    "train": {"steps": 10, "batch_size": 16, "eval_every": 3},
    "probe": {"every": 2},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with `changes` merged in, section by section."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tiny(**changes: Any) -> dict[str, Any]:
    """The TINY config as a raw mapping, with sections merged from `changes`."""
    return merge(TINY, changes)


def tiny_config(**changes: Any):
    from gradlab.config import config_from_dict

    return config_from_dict(tiny(**changes), "tiny.yaml")


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Write a mapping (dumped as YAML) or raw text to tmp_path/<name> and return the path."""

    def write(content: dict[str, Any] | str, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def run_tiny(tmp_path: Path):
    """Run the tiny config (with changes) under tmp_path/runs; return the RunOutcome."""
    from gradlab.runner import run_config

    def run(observers: tuple[Any, ...] = (), **changes: Any):
        return run_config(tiny_config(**changes), tmp_path / "runs", observers)

    return run


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, as plain strings (what any outside reader sees)."""
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Whatever a test asserted, every process it started (`procs.start`) is killed after it:
    a failed test must not leave a million-step run training in the background."""
    yield
    procs.stop_all()


@pytest.fixture(autouse=True, scope="session")
def _no_process_left_at_the_end():
    """The same at the end of the session, for a module fixture whose setup failed (its
    processes outlive the test that asked for it)."""
    yield
    procs.stop_all()
