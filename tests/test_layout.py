"""The package's layout follows the data flow: each stage imports only from the stages before it.

One subprocess per package imports it whole and lists what came with it, so no earlier test's
imports can hide a violation.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import gradlab

STAGES = ("config", "build", "train", "record", "analyse", "render")

# What a stage must never pull in (directly or through another module).
FORBIDDEN = {
    "config": ("torch", "gradlab.build", "gradlab.train", "gradlab.record", "gradlab.analyse",
               "gradlab.render", "gradlab.runner", "gradlab.compare"),
    "record": ("torch", "gradlab.build", "gradlab.train", "gradlab.analyse", "gradlab.render",
               "gradlab.runner", "gradlab.compare"),
    "analyse": ("torch", "gradlab.build", "gradlab.train", "gradlab.render", "gradlab.runner",
                "gradlab.compare"),
    "render": ("torch", "gradlab.build", "gradlab.train", "gradlab.runner", "gradlab.compare"),
    "build": ("gradlab.train", "gradlab.record", "gradlab.analyse", "gradlab.render",
              "gradlab.runner", "gradlab.compare"),
    "train": ("gradlab.record", "gradlab.analyse", "gradlab.render", "gradlab.runner",
              "gradlab.compare"),
}


def modules_of(stage: str) -> list[str]:
    package = __import__(f"gradlab.{stage}", fromlist=["__path__"])
    return [f"gradlab.{stage}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def imported_with(modules: list[str]) -> set[str]:
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_a_stage_imports_only_the_stages_before_it(stage: str) -> None:
    loaded = imported_with(modules_of(stage))
    bad = sorted(m for m in loaded for f in FORBIDDEN[stage] if m == f or m.startswith(f + "."))
    assert not bad, f"gradlab.{stage} pulls in {bad}"


def test_the_torch_free_stages_load_without_torch() -> None:
    """The check the architecture promises, exactly as a user would run it."""
    code = ("import gradlab.config, gradlab.record, gradlab.analyse, gradlab.render; "
            "import sys; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_module_belongs_to_a_stage_or_is_a_driver() -> None:
    top = {m.name for m in pkgutil.iter_modules(gradlab.__path__)}
    assert top == {*STAGES, "runner", "compare", "predict", "fix", "cli", "watch", "__main__"}
