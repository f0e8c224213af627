"""--help in the usual notation, --version and -h; a config's data file found beside it."""

import os

import pytest
from typer.testing import CliRunner

from gradlab import __version__
from gradlab.cli import app
from gradlab.config import ConfigError, load_config

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"}, prog_name="gradlab")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_type_placeholders(command):
    result = invoke(command, "-h")
    assert result.exit_code == 0, result.output
    assert "Usage: gradlab " + command in result.output
    for placeholder in ("<bool>", "<list[str]>", "{"):
        assert placeholder not in result.output, f"{command} --help shows {placeholder}"


def test_each_commands_summary_is_one_reflowed_paragraph():
    """`gradlab --help` lists each command with its docstring's first paragraph, wrapped only
    at the terminal's width: at 200 columns, on one line."""
    listing = CliRunner().invoke(app, ["-h"], env={"COLUMNS": "200"}, prog_name="gradlab").output
    for command in app.registered_commands:
        first = " ".join(command.callback.__doc__.strip().split("\n\n")[0].split())
        row = next(line for line in listing.splitlines()
                   if line.strip("│ ").startswith(command.name or command.callback.__name__))
        assert first in row, (first, row)


def test_version_and_short_help():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"gradlab {__version__}"
    assert "Commands" in invoke("-h").output


def test_a_relative_data_path_is_read_beside_the_config(tmp_path, monkeypatch):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "points.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n"
                                                             for i in range(40)))
    config = folder / "mine.yaml"
    config.write_text("name: mine\ndata: {kind: file, path: points.csv, target: y}\n")
    monkeypatch.chdir(tmp_path)  # elsewhere: the file is still found beside the config
    cfg = load_config(config)
    assert cfg.data.path == str(folder / "points.csv")
    os.remove(folder / "points.csv")
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert f"no such file '{folder / 'points.csv'}'" in str(e.value)  # where it looked
    with pytest.raises(ConfigError) as e:  # a directory is named as one, not as missing
        load_config(config, ["data.path=."])
    assert "data.path: '.' is a directory: give a .csv or .npz file" in str(e.value)
    # on the command line, a path stays relative to where the command runs
    (tmp_path / "here.csv").write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
    assert load_config(config, ["data.path=here.csv"]).data.path == "here.csv"
