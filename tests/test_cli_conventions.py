"""The CLI follows its ecosystem: flags without a value type, choices listed in --help, an example per command,
usage errors as one line, the CUDA request on a CPU-only torch naming the fix."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from emocli.cli import app

COMMANDS = ("synth", "prepare", "train", "eval", "compare", "predict")
runner = CliRunner()


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_flags_as_flags_and_an_example(command):
    text = _help(command)
    assert "<bool>" not in text
    assert re.search(rf"Example: emocli {command} ", text)
    assert "--json" in text


def test_choices_are_listed_in_help():
    assert "<random|loso|loso-speaker|speaker-folds|all>" in _help("train")
    assert "<classes|dimensions|both>" in _help("train")
    assert "<auto|4class|4class-noexc|6class|all|manifest>" in _help("prepare")
    assert "<auto|always|never>" in _help("predict")


def test_a_wrong_choice_is_one_line_naming_the_choices(tmp_path):
    import subprocess
    import sys

    from test_train import REPO, subprocess_env

    done = subprocess.run([sys.executable, "-m", "emocli", "train", str(tmp_path / "c.h5"), "--protocol", "kfold"],
                          capture_output=True, text=True, cwd=REPO, env=subprocess_env(), timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error:") and "'kfold' is not one of" in line and "'speaker-folds'" in line


def test_flag_takes_no_value(tmp_path):
    # `compare RUN --json true` must not be read as --json=true: `true` is another run (which does not exist).
    result = runner.invoke(app, ["compare", str(tmp_path), "--json", "true"])
    assert result.exit_code == 1


def test_cuda_on_a_cpu_only_torch_says_how_to_install_the_cuda_build():
    import torch

    from emocli.batch import resolve_device
    from emocli.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError) as caught:
        resolve_device("cuda")
    line = str(caught.value)
    if torch.version.cuda is None:
        assert "CPU-only build" in line and "pip install torch==2.13.0 --index-url" in line
    else:
        assert "sees no GPU" in line
