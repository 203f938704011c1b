"""The examples run: each script's `--help` and `--smoke` mode in a fresh process (as a
user would run them), and the digits CNN reaches the accuracy its docs promise.
(examples/sharded_init.py is run by test_sharding.py.)"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = ["quickstart.py", "digits_cnn.py", "char_transformer.py", "zoo.py"]


def run(script: str, *args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
    assert "usage:" in run(script, "--help")


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script):
    assert run(script, "--smoke")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_cnn_reaches_97_percent():
    digits = load_example("digits_cnn")
    _, state, history = digits.train(epochs=25, progress=False)
    losses, accuracies = zip(*history)
    assert accuracies[-1] >= 0.97, history
    assert losses[-1] < losses[0] / 10, history


def test_char_transformer_loss_falls_below_its_stated_value():
    transformer = load_example("char_transformer")
    _, losses = transformer.train(300, log=lambda message: None)
    assert losses[0] > 4.0, losses[:10]  # about log(100): a uniform guess
    assert sum(losses[-50:]) / 50 < 2.1, losses[-50:]
