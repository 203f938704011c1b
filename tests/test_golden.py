"""Golden values: checksums of a few models' parameters, recorded before the trace
cache and the sharded evaluator were written (commit 1f69133). Init must keep giving
these exact bits, on a first init and on a later one that reuses the trace."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec


def checksum(tree) -> str:
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "dtype"):
            digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:16]


class Block(lm.Module):
    norm: lm.nn.LayerNorm
    attention: lm.nn.MultiheadAttention
    mlp: lm.nn.MLP

    def __init__(self):
        self.norm = lm.nn.LayerNorm()
        self.attention = lm.nn.MultiheadAttention(4)
        self.mlp = lm.nn.MLP(32, 64, 1)

    def __call__(self, x):
        h = jax.vmap(self.norm)(x)
        x = x + self.attention(h, h, h)
        return x + jax.vmap(self.mlp)(x)


class CNN(lm.Module):
    conv: lm.nn.Conv2d
    norm: lm.nn.GroupNorm
    head: lm.nn.Linear

    def __init__(self):
        self.conv = lm.nn.Conv2d(8, 3, padding=1)
        self.norm = lm.nn.GroupNorm(2)
        self.head = lm.nn.Linear(10)

    def __call__(self, x):
        return self.head(self.norm(jax.nn.relu(self.conv(x))).mean(axis=(1, 2)))


GOLDEN = {
    "mlp": (lambda: lm.init(lm.nn.MLP(10, 64, 3), 0, spec(20)), "8f2375b09c8013aa"),
    "block": (lambda: lm.init(Block(), 1, spec(6, 32)), "bfa69d71a6e2b7c6"),
    "cnn": (lambda: lm.init(CNN(), 2, spec(3, 12, 12)), "cdf68ef1416fa0c8"),
    "gru": (lambda: lm.init(lm.nn.GRUCell(16), 3, spec(5), spec(16)), "37e0ccb0f8e2874a"),
    "embedding": (
        lambda: lm.init(lm.nn.Embedding(50, 8), {"params": 4}, spec(dtype=jnp.int32)),
        "ceb7a26e18a72595",
    ),
}


@pytest.mark.parametrize("name", GOLDEN)
def test_values_are_the_golden_bits_on_a_first_and_a_later_init(name):
    make, expected = GOLDEN[name]
    lm.clear_caches()
    assert checksum(make()) == expected  # traced
    assert checksum(make()) == expected  # the kept trace
