"""The package's layout follows the data flow: each stage imports only from the stages before it.

A fresh process per package (forked from one subprocess) imports it whole and lists what came
with it, so no earlier test's imports can hide a violation.
"""

from __future__ import annotations

import json
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


# One interpreter, a forked child per stage: each child imports its stage's modules and lists
# sys.modules, so it sees what the stage pulled in and nothing of gradlab imported before. The
# stages that must not import torch fork from the bare interpreter; the others (build, train)
# fork after it has imported torch once, for both of them: torch imports nothing of gradlab, so
# whatever gradlab module a child lists, its stage pulled in.
LIST_IMPORTS = """
import importlib, json, os, sys

def imported_with(modules):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            for m in modules:
                importlib.import_module(m)
            listed = sorted(sys.modules)
        except BaseException as e:
            listed = f"{type(e).__name__}: {e}"
        with os.fdopen(write, "w") as f:
            json.dump(listed, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        listed = json.load(f)
    os.waitpid(pid, 0)
    return listed

loaded = {}
for stage, modules, torch_allowed in json.loads(sys.argv[1]):
    if torch_allowed:
        import torch
    loaded[stage] = imported_with(modules)
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def imported_by_stage() -> dict[str, list[str] | str]:
    """stage → the modules loaded once its modules are imported (or why importing failed)."""
    stages = sorted(FORBIDDEN, key=lambda stage: "torch" not in FORBIDDEN[stage])
    plan = [(stage, modules_of(stage), "torch" not in FORBIDDEN[stage]) for stage in stages]
    done = subprocess.run([sys.executable, "-c", LIST_IMPORTS, json.dumps(plan)],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.mark.xdist_group("imported_by_stage")  # one worker runs the shared fixture once
@pytest.mark.parametrize("stage", sorted(FORBIDDEN))
def test_a_stage_imports_only_the_stages_before_it(stage: str, imported_by_stage: dict) -> None:
    loaded = imported_by_stage[stage]
    assert isinstance(loaded, list), f"importing gradlab.{stage} failed: {loaded}"
    bad = sorted(m for m in loaded for f in FORBIDDEN[stage] if m == f or m.startswith(f + "."))
    assert not bad, f"gradlab.{stage} pulls in {bad}"


def test_the_torch_free_stages_load_without_torch() -> None:
    """The check the architecture promises, exactly as a user would run it."""
    code = ("import gradlab.config, gradlab.record, gradlab.analyse, gradlab.render; "
            "import sys; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_module_belongs_to_a_stage_or_is_a_driver() -> None:
    top = {m.name for m in pkgutil.iter_modules(gradlab.__path__)}
    assert top == {*STAGES, "runner", "compare", "predict", "fix", "cli", "watch", "sweep",
                   "cluster", "export", "adapters", "__main__"}
