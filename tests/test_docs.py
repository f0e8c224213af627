"""The README's sample outputs are made by `make docs` from real runs: none is older than the
configs it ran or the code that printed it."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def blocks() -> list[str]:
    return [m["command"] for m in generate.BLOCK.finditer(generate.README.read_text())]


def test_the_readme_has_generated_samples():
    commands = blocks()
    assert any("gradlab run configs/deep_sigmoid.yaml" in c for c in commands)
    assert any("make reproduce" in c or "compare configs/" in c for c in commands)


def test_no_sample_is_stale():
    import json

    stamps = json.loads(generate.STAMPS.read_text())
    stale = [c for c in blocks() if stamps.get(c) != generate.stamp(c)]
    assert not stale, f"README samples older than their configs or code: {stale}; run make docs"


def test_a_changed_config_makes_its_sample_stale(tmp_path, monkeypatch):
    command = next(c for c in blocks() if "configs/deep_sigmoid.yaml" in c)
    before = generate.stamp(command)
    copy = tmp_path / "configs"
    copy.mkdir()
    (copy / "deep_sigmoid.yaml").write_text(
        (ROOT / "configs" / "deep_sigmoid.yaml").read_text() + "# changed\n")
    monkeypatch.setattr(generate, "ROOT", tmp_path)
    (tmp_path / "gradlab").symlink_to(ROOT / "gradlab")
    assert generate.stamp(command)["configs"] != before["configs"]
    assert re.search(r"configs/deep_sigmoid\.yaml", command)
