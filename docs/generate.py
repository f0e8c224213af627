"""`make docs`: every sample output in README.md, made again from real runs.

README.md marks each generated block:

    <!-- make docs: gradlab run configs/deep_sigmoid.yaml --out {runs} -->
    ```text
    (replaced by the command's output)
    ```
    <!-- /make docs -->

The command runs in a shell with `COLUMNS` (80 unless the marker says `COLUMNS=N` first),
`{runs}` a records directory shared by every block of one generation (so a later block can
`gradlab report` what an earlier one ran), and `{docs}` this directory (a block may copy figures
here: `cp {runs}/…/grad_flow.png {docs}/`). A command without `{runs}` runs at the repository's
root (`make reproduce`'s records in `runs/` are reused there). One with `{runs}` runs in a
temporary copy of the root's layout (`configs` and `examples` linked in) where `{runs}` is
`runs`: its output shows the paths a user running it from the repository with `--out runs` sees,
and wraps its lines where theirs wrap. There `{root}` is the repository (`{root}/runs/…` for
`make reproduce`'s records). Only stdout is kept (progress lines go to stderr; add `2>&1` to a
command to keep its errors). Lines a marker's `| keep N` suffix would drop are left out (the
first N lines). The exit code is not checked: some samples show a failure on purpose.

`docs/generated.json` records, for each block, its command and the SHA-256 of every config it
names and of the renderer's sources; `tests/test_docs.py` fails when one of them has changed
since, so a config or a report cannot change and leave the README stale.

    python docs/generate.py            # every block
    python docs/generate.py --check    # only say which blocks are stale (exit 1 if any)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
STAMPS = DOCS / "generated.json"
BLOCK = re.compile(r"(<!-- make docs: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- /make docs -->)",
                   re.S)
CONFIG = re.compile(r"configs/[\w./-]+\.ya?ml|configs/?(?=\s|$)")
# what a sample output depends on besides its configs: the code that prints and draws
SOURCES = ("gradlab/render", "gradlab/cli.py", "gradlab/analyse", "gradlab/record/summary.py")


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def files_of(names: list[str]) -> list[Path]:
    found: list[Path] = []
    for name in names:
        path = ROOT / name
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".py", ".yaml", ".yml"))
        elif path.is_file():
            found.append(path)
    return found


def stamp(command: str) -> dict[str, str]:
    """What a block was made from: its configs' and the renderer's source digests."""
    return {"configs": digest(files_of(CONFIG.findall(command))),
            "sources": digest(files_of(list(SOURCES)))}


def run(command: str, runs: Path) -> str:
    columns = "80"
    m = re.match(r"COLUMNS=(\d+)\s+(.*)", command)
    if m:
        columns, command = m.group(1), m.group(2)
    keep = None
    m = re.match(r"(.*?)\s*\| keep (\d+)$", command)
    if m:
        command, keep = m.group(1), int(m.group(2))
    own = "{runs}" in command
    shell = command.replace("{runs}", "runs").replace("{docs}", str(DOCS)) \
        .replace("{root}", str(ROOT))
    env = {**os.environ, "COLUMNS": columns, "NO_COLOR": "1", "TERM": "dumb",
           "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(shell, shell=True, cwd=runs.parent if own else ROOT, env=env,
                          capture_output=True, text=True)
    # stdout: the progress lines are on stderr
    lines = [_shortened(line, str(runs)) for line in done.stdout.splitlines()]
    if keep is not None:
        lines = lines[:keep]
    return "\n".join(lines).strip("\n") + "\n"


def workspace(tmp: Path) -> Path:
    """The records directory `tmp/runs`, beside links to the repository's configs and examples:
    the layout a `{runs}` command runs in."""
    for name in ("configs", "examples"):
        (tmp / name).symlink_to(ROOT / name, target_is_directory=True)
    runs = tmp / "runs"
    runs.mkdir()
    return runs


def _shortened(line: str, tmp: str) -> str:
    """The line with the records directory's absolute path (should a command print one) read
    as `runs`; inside a box the right border keeps its column."""
    short = line.replace(tmp, "runs")
    if short != line and line.rstrip().endswith("│"):
        body = short.rstrip()[:-1]
        short = body + " " * (len(line.rstrip()) - len(short.rstrip())) + "│"
    return short.rstrip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    parser.add_argument("--only", help="regenerate only blocks whose command contains this")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    stamps = json.loads(STAMPS.read_text()) if STAMPS.is_file() else {}
    if args.check:
        stale = [b["command"] for b in BLOCK.finditer(text)
                 if stamps.get(b["command"]) != stamp(b["command"])]
        for command in stale:
            print(f"stale: {command}")
        return 1 if stale else 0
    fresh: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="gradlab-docs-") as tmp:
        runs = workspace(Path(tmp))

        def replace(m: re.Match[str]) -> str:
            command = m["command"]
            if args.only and args.only not in command:
                if command in stamps:
                    fresh[command] = stamps[command]
                return m.group(0)
            print(f"make docs: {command}", file=sys.stderr)
            fresh[command] = stamp(command)
            return f"{m.group(1)}```text\n{run(command, runs)}```\n{m.group(4)}"

        text = BLOCK.sub(replace, text)
    README.write_text(text, encoding="utf-8")
    STAMPS.write_text(json.dumps(fresh, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
