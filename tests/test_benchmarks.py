"""The benchmark compares like with like: each model built by lazymod has the same
parameter and state shapes as the one written by hand in Equinox, and the benchmark's
report is written from results of the worker's format."""

import equinox as eqx
import jax
import pytest

from benchmarks import models


def shapes(tree):
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_array))
    return [(leaf.shape, leaf.dtype) for leaf in leaves]


@pytest.mark.parametrize("model", ["mlp", "cnn", "transformer", "deep_mlp"])
def test_lazymod_and_equinox_build_the_same_model(model, monkeypatch):
    # Smaller sizes, same structure: the test checks the builders, not the speed.
    monkeypatch.setattr(models, "MLP_WIDTH", 16)
    monkeypatch.setattr(models, "CNN_CHANNELS", (4, 8))
    monkeypatch.setattr(models, "CNN_INPUT", (3, 8, 8))
    monkeypatch.setattr(
        models, "TRANSFORMER", dict(blocks=2, width=16, heads=2, hidden=32, seq_len=4)
    )
    depth = 5 if model == "deep_mlp" else None
    ours = models.builder("lazymod", model, depth)(jax.random.key(0), 2)
    theirs = models.builder("equinox", model, depth)(jax.random.key(0), 2)
    assert shapes(ours) == shapes(theirs)
    # Same Equinox layer types in the same order (the user-level classes differ).
    ignore = {"LazyCNN", "LazyBlock", "EquinoxCNN", "EquinoxBlock"}
    assert [n for n in module_types(ours) if n not in ignore] == [
        n for n in module_types(theirs) if n not in ignore
    ]


def module_types(tree) -> list[str]:
    """The type names of every module in `tree`, parents before children."""
    names = []

    def visit(node):
        children = jax.tree.leaves(
            node, is_leaf=lambda x: x is not node and isinstance(x, eqx.Module)
        )
        for child in children:
            if isinstance(child, eqx.Module) and child is not node:
                names.append(type(child).__name__)
                visit(child)

    visit([tree])
    return names
