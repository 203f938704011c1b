"""Every misuse gets a clear error: one row per misuse (the same table as docs/errors.md).
Each row checks the exception type, that the message names the module path and field
and says what to do, and that the user's module is left exactly as it was."""

import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lazymod as lm

from .helpers import spec


class Model(lm.Module):
    head: lm.nn.Linear

    def __init__(self):
        self.head = lm.nn.Linear(2)

    def __call__(self, x):
        return self.head(x)


def make_initializer_model(fn):
    class Holder(lm.Module):
        table: Any

        def __init__(self):
            self.table = lm.Initializer(fn)

    return Holder()


def failing(key):
    raise ValueError("bad scale")


class RaisingRngInit(lm.Module):
    w: jax.Array = lm.lazy()

    def rng_init(self):
        raise KeyError("oops")


class Outer(lm.Module):
    inner: RaisingRngInit


class DataDependent(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            self.w = x * 2  # from the input's values
        return x


class Branchy(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x, branch=False):
        if self.initializing() and branch:
            self.w = jnp.zeros(x.shape)
        return x


class BranchesOnValues(lm.Module):
    def __call__(self, x):
        return x if x.sum() > 0 else -x  # Python control flow on an input's values


class HoldsBranchOnValues(lm.Module):
    inner: BranchesOnValues

    def __call__(self, x):
        return self.inner(x)


class LeaksFromVmap(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        def row(r):
            if self.initializing():
                self.w = r * 0 + jax.random.normal(lm.next_key(), r.shape)
            return r

        return jax.vmap(row)(x)


def restore_from_a_directory(model: Any) -> Any:
    with tempfile.TemporaryDirectory() as directory:
        return lm.restore(model, directory, spec(5))


class NeverCalled(lm.Module):
    used: lm.nn.Linear
    unused: lm.nn.Linear

    def __init__(self):
        self.used, self.unused = lm.nn.Linear(2), lm.nn.Linear(2)

    def __call__(self, x):
        return self.used(x)


class FirstCalledInScan(lm.Module):
    """A Treex-style cell whose first call is inside the forward pass's scan."""

    w: jax.Array = lm.lazy()

    def cell(self, h, x):
        if self.initializing():
            self.w = jax.random.normal(lm.next_key(), (x.shape[-1], 2))
        return h, x @ self.w

    def __call__(self, xs):
        return jax.lax.scan(self.cell, jnp.zeros(()), xs)[1]


class StaticTracer(lm.Module):
    size: Any = eqx.field(static=True, default=None)

    def __call__(self, x):
        if self.initializing():
            self.size = jax.random.normal(lm.next_key(), ())
        return x


class Undeclared(lm.Module):
    def __call__(self, x):
        if self.initializing():
            self.extra = jnp.zeros(3)
        return x


class Twice(lm.Module):
    a: Any
    b: Any

    def __call__(self, x):
        return self.a(x) + self.b(x)


class NoParamsStream(lm.Module):
    w: jax.Array = lm.lazy()

    def rng_init(self):
        self.w = jax.random.normal(lm.next_key("dropout"), (3,))


class DrawsAtEveryCall(lm.Module):
    def __call__(self, x):
        return x + jax.random.normal(lm.next_key("dropout"), x.shape)


class Setter(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            self.w = jnp.ones(3)
        return x

    def reset(self):
        self.w = jnp.zeros(3)


class AssignsAlways(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        self.w = jnp.ones(3)  # not in an `if self.initializing():` block
        return x


SHARED = lm.nn.Linear(3)


class CalledTwice(lm.Module):
    layer: Any

    def __call__(self, x):
        return self.layer(self.layer(x))


class IntOfValues(lm.Module):
    def __call__(self, x):
        return x * int(x.sum())  # a Python int from an input's values


class ItemOfValues(lm.Module):
    def __call__(self, x):
        return x * x.max().item()


class Holds(lm.Module):
    inner: Any

    def __call__(self, x):
        return self.inner(x)


class Stateful(lm.Module):
    norm: lm.nn.BatchNorm

    def __init__(self):
        self.norm = lm.nn.BatchNorm("batch", mode="batch")

    def __call__(self, x, state):
        return self.norm(x, state)


class AddsAFloat(lm.Module):
    def __call__(self, x):
        return jax.lax.add(x, jnp.ones(x.shape, jnp.float32))  # lax does not promote


class Embeds(lm.Module):
    embed: lm.nn.Embedding

    def __init__(self):
        self.embed = lm.nn.Embedding(10, 4)

    def __call__(self, x):
        return self.embed(x)


class FromInit(lm.Module):
    """A module whose field's shape comes from its constructor's argument."""

    size: int = eqx.field(static=True)
    w: jax.Array = lm.lazy()

    def rng_init(self):
        self.w = jax.random.normal(lm.next_key(), (self.size,))

    def __call__(self, x, *, key=None):
        return x


def row_split():
    mesh = jax.make_mesh((1,), ("model",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model", None))


def damaged(cut: slice | None = None, replace: bytes | None = None) -> io.BytesIO:
    """A checkpoint of `Model` built for float32[5] inputs, cut short or replaced."""
    data = saved(lm.init(Model(), 0, spec(5))).getvalue()
    return io.BytesIO(data[cut] if cut is not None else replace)


# Under the test suite's jaxtyping hook, its own TypeError about parameter `x` comes
# before lazymod's check; without the hook, lazymod's message (the first choice) shows.
NOT_AN_ARRAY = r"Model\.head \(Linear\): expected an array; got an input of {}|parameter 'x'"


class SetInThePass(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            self.w = jnp.ones(x.shape)
        return x * self.w


class ReadsTooEarly(lm.Module):
    sub: SetInThePass
    total: jax.Array = lm.lazy()

    def rng_init(self):  # before the forward pass: sub.w is not set yet
        self.total = self.sub.w.sum()

    def __call__(self, x):
        return self.sub(x)


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    module: Callable[[], Any]  # the user's module (checked untouched afterwards)
    misuse: Callable[[Any], Any]  # module -> the misuse
    error: type[BaseException]
    says: tuple[str, ...]  # regexes the message must match

    def __str__(self) -> str:
        return self.name


ROWS = [
    Row(
        "key-str",
        Model,
        lambda m: lm.init(m, "seed", spec(5)),
        TypeError,
        ("key must be a jax.random.key", "got str 'seed'"),
    ),
    Row(
        "key-float-array",
        Model,
        lambda m: lm.init(m, jnp.ones(2), spec(5)),
        TypeError,
        ("key must be", "dtype float32"),
    ),
    Row(
        "key-uint32-wrong-shape",
        Model,
        lambda m: lm.init(m, jnp.zeros(3, jnp.uint32), spec(5)),
        TypeError,
        ("uint32 array of shape \\(3,\\), which is not a legacy key",),
    ),
    Row(
        "key-empty-dict",
        Model,
        lambda m: lm.init(m, {}, spec(5)),
        TypeError,
        ("empty dict of keys",),
    ),
    Row(
        "key-stream-not-str",
        Model,
        lambda m: lm.init(m, {1: jax.random.key(0)}, spec(5)),
        TypeError,
        ("stream names must be str",),
    ),
    Row(
        "stream-without-params-fallback",
        NoParamsStream,
        lambda m: lm.init(m, {"noise": jax.random.key(0)}),
        lm.InitError,
        (
            r"NoParamsStream: drew a key from the stream 'dropout', which has no key and none "
            r"to fall back to",
            r"given keys for the streams \['noise'\] only",
            "Add 'dropout' or 'params'",
        ),
    ),
    Row(
        "the-params-stream-without-a-key",
        lambda: Model(),
        lambda m: lm.init(m, {"dropout": jax.random.key(0)}, spec(5)),
        lm.InitError,
        (r"Model.head: drew a key from the stream 'params', which has no key;", "Add 'params'"),
    ),
    Row(
        # A key drawn at every call could not be drawn once the model is initialized.
        "next_key-in-the-forward-pass-outside-initializing",
        lambda: DrawsAtEveryCall(),
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (
            r"DrawsAtEveryCall: lazymod.next_key\(\) was called in the forward pass outside "
            r"an `if self.initializing\(\):` block",
            "take a `key=` argument at call time",
        ),
    ),
    Row(
        "spec-batched-for-linear",
        Model,
        lambda m: lm.init(m, 0, spec(32, 5)),
        lm.InitValueError,
        (r"Model\.head \(Linear\)", r"shape \(in_features,\)", r"\(32, 5\)", "jax.vmap"),
    ),
    Row(
        "spec-wrong-rank-for-conv",
        lambda: lm.nn.Sequential([lm.nn.Conv2d(4, 3)]),
        lambda m: lm.init(m, 0, spec(8, 8)),
        lm.InitValueError,
        (r"Sequential\.layers\[0\] \(Conv2d\)", "rank-3", r"\(8, 8\)"),
    ),
    Row(
        "spec-groups-do-not-divide-channels",
        lambda: lm.nn.Sequential([lm.nn.Conv2d(4, 3, groups=2)]),
        lambda m: lm.init(m, 0, spec(3, 8, 8)),
        lm.InitValueError,
        (r"Sequential\.layers\[0\] \(Conv2d\)", "groups"),
    ),
    Row(
        "initializer-raises",
        lambda: make_initializer_model(failing),
        lambda m: lm.init(m, 0),
        lm.InitValueError,
        (r"Holder\.table: its Initializer raised ValueError: bad scale",),
    ),
    Row(
        "initializer-returns-python-scalar",
        lambda: make_initializer_model(lambda key: 1.0),
        lambda m: lm.init(m, 0),
        lm.InitError,
        (r"Holder\.table: its Initializer returned float 1.0, not an array", "jnp.asarray"),
    ),
    Row(
        "initializer-returns-non-array",
        lambda: make_initializer_model(lambda key: "zeros"),
        lambda m: lm.init(m, 0),
        lm.InitError,
        (r"Holder\.table: its Initializer returned str", "must return a jax.Array"),
    ),
    Row(
        "initializer-fn-not-callable",
        lambda: None,
        lambda m: lm.Initializer(3),
        TypeError,
        # Under the test suite's jaxtyping hook, its own TypeError comes first.
        (r"Initializer\(fn\) needs a function key -> array; got int|parameter 'fn'",),
    ),
    Row(
        "rng-init-raises",
        lambda: Outer(RaisingRngInit()),
        lambda m: lm.init(m, 0),
        lm.InitError,
        (r"Outer\.inner \(RaisingRngInit\): rng_init raised KeyError",),
    ),
    Row(
        "next-key-outside-init",
        lambda: None,
        lambda m: lm.next_key(),
        lm.InitError,
        ("called outside lazymod.init", "pass a key explicitly"),
    ),
    Row(
        "assign-field-outside-init",
        lambda: lm.init(Setter(), 0, spec(2)),
        lambda m: m.reset(),
        dataclasses.FrozenInstanceError,
        ("cannot assign to field 'w' of Setter", "eqx.tree_at"),
    ),
    Row(
        "assign-outside-an-initializing-block-during-init",
        AssignsAlways,
        lambda m: lm.init(m, 0, spec(2)),
        dataclasses.FrozenInstanceError,
        ("cannot assign to field 'w' of AssignsAlways", r"if self\.initializing\(\):"),
    ),
    Row(
        "assign-undeclared-field-during-init",
        Undeclared,
        lambda m: lm.init(m, 0, spec(2)),
        AttributeError,
        ("Undeclared has no field 'extra'", r"extra: jax.Array = lazymod.lazy\(\)"),
    ),
    Row(
        "call-uninitialized",
        Model,
        lambda m: m(jnp.ones(5)),
        lm.UninitializedError,
        (r"Model\.head \(Linear\)", "not initialized", r"lazymod.init\(model, key"),
    ),
    Row(
        "call-uninitialized-under-jit",
        Model,
        lambda m: eqx.filter_jit(lambda m, x: m(x))(m, jnp.ones(5)),
        lm.UninitializedError,
        (r"Model\.head \(Linear\)", "not initialized"),
    ),
    Row(
        "call-uninitialized-under-vmap",
        Model,
        lambda m: jax.vmap(m)(jnp.ones((4, 5))),
        lm.UninitializedError,
        (r"Model\.head \(Linear\)", "not initialized"),
    ),
    Row(
        "data-dependent-init-on-a-spec",
        DataDependent,
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (r"DataDependent\.w: this value depends on the values of an input", "real arrays"),
    ),
    Row(
        "placeholder-left-by-unreached-branch",
        Branchy,
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (r"left 1 field uninitialized", r"Branchy\.w", "partial=True"),
    ),
    Row(
        "lazy-layer-never-called",
        NeverCalled,
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (r"left 1 field uninitialized:\n  NeverCalled\.unused \(a lazy Linear, never called\)\n",),
    ),
    Row(
        "field-set-to-a-tracer-that-would-leak",
        LeaksFromVmap,
        lambda m: lm.init(m, 0, spec(4, 3)),
        lm.InitError,
        (r"LeaksFromVmap\.w", "inside a JAX transformation", "outside the transformation"),
    ),
    Row(
        "field-set-in-a-scan-from-keys-alone",
        FirstCalledInScan,
        lambda m: lm.init(m, 0, spec(5, 3)),
        lm.InitError,
        (r"FirstCalledInScan\.w", "under jax.lax.scan or jax.jit, none can", "once before it"),
    ),
    Row(
        "tracer-in-a-static-field",
        StaticTracer,
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (r"StaticTracer\.size: a traced array was assigned to this static field",),
    ),
    Row(
        "same-lazy-module-twice",
        lambda: Twice(SHARED, SHARED),
        lambda m: lm.init(m, 0, spec(5)),
        lm.InitError,
        (r"Twice\.a and Twice\.b are the same lazy Linear object", "eqx.nn.Shared"),
    ),
    Row(
        "method-not-found",
        Model,
        lambda m: lm.init(m, 0, spec(5), method="encode"),
        AttributeError,
        ("Model has no method 'encode'",),
    ),
    Row(
        "method-bound-to-another-object",
        Model,
        lambda m: lm.init(m, 0, spec(5), method=Model().__call__),
        TypeError,
        ("bound to another object",),
    ),
    Row(
        "inputs-but-not-callable",
        lambda: [lm.nn.Linear(2)],
        lambda m: lm.init(m, 0, spec(5)),
        TypeError,
        ("list is not callable", "method="),
    ),
    Row(
        "partial-not-bool",
        Model,
        lambda m: lm.init(m, 0, spec(5), partial="yes"),
        TypeError,
        ("must be bool|parameter 'partial'",),
    ),
    Row(
        "layer-called-again-with-other-shapes",
        lambda: CalledTwice(lm.nn.Linear(3)),
        lambda m: lm.init(m, 0, spec(5)),
        lm.InitTypeError,
        (
            r"CalledTwice\.layer \(Linear\): called again during init with inputs "
            r"\(float32\[3\]\), but it was built on its first call, for inputs \(float32\[5\]\)",
            "use two layers",
        ),
    ),
    Row(
        "spec-negative-dimension",
        Model,
        lambda m: lm.init(m, 0, jax.ShapeDtypeStruct((-5,), jnp.float32)),
        lm.InitValueError,
        (r"the input args\[0\] is a jax.ShapeDtypeStruct of shape \(-5,\)", "negative"),
    ),
    Row(
        "spec-non-integer-dimension",
        Model,
        lambda m: lm.init(m, 0, jax.ShapeDtypeStruct((5.0,), jnp.float32)),
        lm.InitTypeError,
        (r"args\[0\].*dimension 5.0 that is not an int", r"jax.ShapeDtypeStruct\(\(784,\)"),
    ),
    Row(
        "spec-zero-sized-into-a-lazy-layer",
        lambda: lm.nn.Conv2d(4, 3),
        lambda m: lm.init(m, 0, spec(0, 8, 8)),
        lm.InitValueError,
        (r"Conv2d \(Conv2d\): got an input of shape \(0, 8, 8\), with an empty axis", "at least 1"),
    ),
    Row(
        "python-control-flow-on-a-spec",
        lambda: HoldsBranchOnValues(BranchesOnValues()),
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitTypeError,
        (
            r"HoldsBranchOnValues\.inner \(BranchesOnValues.__call__\): Python needs the value",
            "pass real arrays",
        ),
    ),
    Row(
        "next-key-inside-an-initializer",
        lambda: make_initializer_model(lambda key: jax.random.normal(lm.next_key(), (2,))),
        lambda m: lm.init(m, 0),
        lm.InitError,
        (r"Holder\.table: lazymod\.next_key\(\) was called inside an Initializer", "lambda key"),
    ),
    Row(
        "initializer-partition-not-a-sequence",
        lambda: None,
        lambda m: lm.Initializer(lambda key: jnp.zeros(2), partition=3),
        TypeError,
        ("partition=.*takes a sequence with one entry per array axis", "got 3|partition"),
    ),
    Row(
        "int-seed-too-large",
        Model,
        lambda m: lm.init(m, 2**70, spec(5)),
        ValueError,
        ("int seed 1180591620717411303424, which does not fit in 64 bits", "smaller seed"),
    ),
    Row(
        "groups-not-dividing-channels",
        lambda: lm.nn.GroupNorm(3),
        lambda m: lm.init(m, 0, spec(4, 5)),
        lm.InitValueError,
        (r"divisible by groups=3; got an input of shape \(4, 5\)", "Give groups= a divisor of 4"),
    ),
    Row(
        "integer-spec-into-a-conv",
        lambda: lm.nn.Conv2d(4, 3),
        lambda m: lm.init(m, 0, spec(3, 8, 8, dtype=jnp.int32)),
        lm.InitTypeError,
        (r"Conv2d \(Conv2d\): expected a floating-point input", "float dtype such as jnp.float32"),
    ),
    Row(
        "restore-mismatch",
        Model,
        lambda m: lm.restore(m, saved(lm.init(Model(), 0, spec(4))), spec(5)),
        lm.InitError,
        (r"Model\.head\.weight: expected float32\[2, 5\], found float32\[2, 4\]",),
    ),
    Row(
        "conv-out-channels-not-divisible-by-groups",
        lambda: None,
        lambda m: lm.nn.Conv2d(3, 3, groups=2),
        ValueError,
        (r"lazymod.nn.Conv2d: out_channels=3 is not divisible by groups=2", "a divisor of"),
    ),
    Row(
        "shape-tuple-instead-of-a-spec",
        Model,
        lambda m: lm.init(m, 0, (784,)),
        TypeError,
        (NOT_AN_ARRAY.format("tuple"), r"jax.ShapeDtypeStruct\(\(784,\), jnp.float32\)"),
    ),
    Row(
        "none-into-a-lazy-layer",
        Model,
        lambda m: lm.init(m, 0, None),
        TypeError,
        (NOT_AN_ARRAY.format("NoneType"),),
    ),
    Row(
        "list-into-a-lazy-layer",
        Model,
        lambda m: lm.init(m, 0, [spec(5)]),
        TypeError,
        (NOT_AN_ARRAY.format("list"),),
    ),
    Row(
        "dict-into-a-lazy-layer",
        Model,
        lambda m: lm.init(m, 0, {"x": spec(5)}),
        TypeError,
        (NOT_AN_ARRAY.format("dict"),),
    ),
    Row(
        "python-int-of-a-spec",
        lambda: Holds(IntOfValues()),
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitTypeError,
        (r"Holds\.inner \(IntOfValues.__call__\): Python needs the value", "real arrays"),
    ),
    Row(
        "item-of-a-spec",
        lambda: Holds(ItemOfValues()),
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitTypeError,
        (r"Holds\.inner \(ItemOfValues.__call__\): Python needs the value", "real arrays"),
    ),
    Row(
        "stateful-model-given-to-init",
        Stateful,
        lambda m: lm.init(m, 0, spec(4)),
        TypeError,
        ("'state'", r"Stateful \(Stateful.__call__\)", r"lazymod.init_with_state\(model, key"),
    ),
    Row(
        "integer-spec-into-a-float-op",
        lambda: Holds(AddsAFloat()),
        lambda m: lm.init(m, 0, spec(3, dtype=jnp.int32)),
        TypeError,
        (
            "same dtypes",
            r"Holds\.inner \(AddsAFloat.__call__\)",
            r"int32\[3\]",
            r"the input args\[0\] has dtype int32",
            "float dtype such as jnp.float32",
        ),
    ),
    Row(
        "float-spec-into-an-embedding",
        Embeds,
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitTypeError,
        (r"Embeds\.embed \(Embedding\): expected an integer index", r"\(3,\)", "jnp.int32"),
    ),
    Row(
        "batched-token-ids-into-an-embedding",
        Embeds,
        lambda m: lm.init(m, 0, spec(8, 16, dtype=jnp.int32)),
        lm.InitValueError,
        (
            r"Embeds\.embed \(Embedding\): expected an integer index \(a 0-d array",
            r"\(8, 16\)",
            "jax.vmap",
        ),
    ),
    Row(
        "negative-size-for-a-layer",
        Model,
        lambda m: lm.init(lm.nn.Sequential([lm.nn.Linear(4), FromInit(-3)]), 0, spec(5)),
        lm.InitValueError,
        (r"Sequential\.layers\[1\]\.w: init made it with the shape \(-3,\)", "negative"),
    ),
    Row(
        "layer-size-not-an-int",
        lambda: None,
        lambda m: lm.nn.Linear("10"),
        TypeError,
        ("lazymod.nn.Linear: out_features must be an int; got str|parameter 'out_features'",),
    ),
    Row(
        "an-input-missing-an-axis",
        lambda: lm.nn.Conv2d(4, 3),
        lambda m: lm.init(m, 0, spec(32, 32)),
        lm.InitValueError,
        (
            r"Conv2d \(Conv2d\): expected a rank-3 array .* got an input of shape \(32, 32\)\. "
            r"It has 2 axes, fewer than the 3 the layer takes: give it the missing one",
        ),
    ),
    Row(
        "layer-size-zero",
        lambda: None,
        lambda m: lm.nn.Conv2d(8, kernel_size=0),
        ValueError,
        ("lazymod.nn.Conv2d: kernel_size must be at least 1; got 0",),
    ),
    Row(
        "plain-equinox-layer-fails-inside-a-sequential",
        lambda: eqx.nn.Sequential([lm.nn.Linear(4), eqx.nn.Linear(5, 2, key=jax.random.key(0))]),
        lambda m: lm.init(m, 0, spec(3)),
        TypeError,
        (
            r"raised in Sequential\.layers\[1\] \(Linear.__call__\), "
            r"whose arguments were \(float32\[4\]\) when it raised",
        ),
    ),
    Row(
        "re-init-of-a-built-model-with-other-shapes",
        lambda: lm.init(Model(), 0, spec(4)),
        lambda m: lm.init(m, 0, spec(8)),
        TypeError,
        (
            r"raised in Model\.head \(Linear.__call__\), whose arguments were "
            r"\(float32\[8\]\) when it raised",
            "init never rebuilds a layer",
            "initialize a new lazy model",
        ),
    ),
    Row(
        # JAX's conv error names no shape, only a "feature dimension size"; and
        # Equinox's Conv2d makes its `x` 4-d before it raises, so the note gives the
        # arguments as they were then, saying so.
        "re-init-of-a-built-conv-with-other-channels",
        lambda: lm.init(lm.nn.Conv2d(4, kernel_size=3), 0, spec(1, 8, 8)),
        lambda m: lm.init(m, 0, spec(3, 8, 8)),
        ValueError,
        (
            r"raised in Conv2d \(Conv2d.__call__\), whose arguments were "
            r"\(float32\[1,3,8,8\]\) when it raised",
            "init never rebuilds a layer",
        ),
    ),
    Row(
        "the-class-for-an-instance",
        lambda: None,
        lambda m: lm.init(Model, 0, spec(4)),
        TypeError,
        (
            r"lazymod.init got the class Model, not a module: pass an instance, as in "
            r"lazymod.init\(Model\(\), \.\.\.\)",
        ),
    ),
    Row(
        "rng_init-reads-a-field-the-forward-pass-sets",
        lambda: ReadsTooEarly(SetInThePass()),
        lambda m: lm.init(m, 0, spec(3)),
        lm.InitError,
        (
            r"ReadsTooEarly \(ReadsTooEarly\): rng_init raised AttributeError",
            r"a lazy field \(lm.lazy\(\)\) was read before anything set it",
            "then each rng_init",
        ),
    ),
    Row(
        "init-of-the-shapes-init_shapes-returned",
        lambda: lm.init_shapes(lm.nn.Linear(3), spec(4)),
        lambda m: lm.init(m, 0, spec(4)),
        TypeError,
        (
            r"Linear holds jax.ShapeDtypeStructs, as lazymod.init_shapes returns them",
            "Give lazymod.init the lazy model",
        ),
    ),
    Row(
        "dropout-probability-out-of-range",
        lambda: None,
        lambda m: lm.nn.Dropout(1.5),
        ValueError,
        ("lazymod.nn.Dropout: p is the fraction of entries set to zero, between 0 and 1",),
    ),
    Row(
        "sharding-not-a-rule",
        Model,
        lambda m: lm.init(m, 0, spec(5), sharding="model"),
        TypeError,
        ("`sharding` must be a jax.sharding.Mesh.*got str|parameter 'sharding'",),
    ),
    Row(
        "sharding-that-does-not-fit-the-array",
        Model,
        lambda m: lm.init(m, 0, spec(5), sharding=lambda path, leaf: row_split()),
        lm.InitValueError,
        (r"Model\.head\.bias: the sharding .* does not fit its shape \(2,\)", "one entry per axis"),
    ),
    Row(
        "summary-without-inputs",
        Model,
        lambda m: lm.summary(m),
        lm.InitError,
        ("lazymod.summary left 1 field uninitialized", "No inputs were given", "their specs"),
    ),
    Row(
        "method-name-misspelt",
        Model,
        lambda m: lm.summary(m, spec(5), method="__cal__"),
        AttributeError,
        ("lazymod.summary: Model has no method '__cal__'. Did you mean '__call__'",),
    ),
    Row(
        "not-a-module",
        lambda: None,
        lambda m: lm.init("not a module", 0, spec(3)),
        TypeError,
        (r"lazymod.init takes the module first, as in lazymod.init\(model, ...\); got str",),
    ),
    Row(
        "init-shapes-given-a-key",
        Model,
        lambda m: lm.init_shapes(m, 0, spec(5)),
        TypeError,
        ("takes 2 positional arguments", "lazymod.init_shapes takes no key"),
    ),
    Row(
        "init-with-state-of-a-model-without-state",
        Model,
        lambda m: lm.init_with_state(m, 0, spec(5)),
        TypeError,
        ("takes 2 positional arguments", "passes the state after the inputs", "with lazymod.init"),
    ),
    Row(
        "jax-jit-around-init-with-an-int-seed",
        Model,
        lambda m: jax.jit(lm.init)(m, 0, spec(5)),
        TypeError,
        ("int seed becomes a traced array", r"eqx.filter_jit\(lazymod.init\)"),
    ),
    Row(
        "restore-arguments-swapped",
        Model,
        lambda m: lm.restore(damaged(cut=slice(None)), m, spec(5)),
        TypeError,
        (r"the model first, then the file: lazymod.restore\(model, path_or_file|'path_or_file'",),
    ),
    Row(
        "restore-from-a-text-mode-file",
        Model,
        lambda m: lm.restore(m, io.TextIOWrapper(damaged(cut=slice(None))), spec(5)),
        TypeError,
        ("open in text mode", "'rb'"),
    ),
    Row(
        "half-precision-input-into-float32-layers",
        lambda: lm.nn.Conv2d(4, kernel_size=3),
        lambda m: lm.init(m, 0, spec(1, 8, 8, dtype=jnp.float16)),
        TypeError,
        ("float16, float32", "make their parameters in float32 unless given dtype="),
    ),
    Row(
        "bfloat16-input-into-float32-layers",
        lambda: lm.nn.Conv2d(4, kernel_size=3),
        lambda m: lm.init(m, 0, spec(1, 8, 8, dtype=jnp.bfloat16)),
        TypeError,
        ("has dtype bfloat16, and layers make their parameters in float32",),
    ),
    Row(
        "restore-given-a-key",
        Model,
        lambda m: lm.restore(m, 0, damaged(cut=slice(None)), spec(5)),
        TypeError,
        # Under jaxtyping's import hook, its check of the annotation speaks first.
        ("a path or a binary file.*lazymod.restore takes none|'path_or_file'",),
    ),
    Row(
        "restore-of-a-directory",
        Model,
        lambda m: restore_from_a_directory(m),
        IsADirectoryError,
        ("is a directory", r"lazymod.restore_sharded\(model, directory"),
    ),
    Row(
        "restore-state-from-a-file-without-state",
        Stateful,
        lambda m: lm.restore(
            m, saved(lm.init_with_state(Stateful(), 0, spec(4))[0]), spec(4), with_state=True
        ),
        lm.InitError,
        (
            "the state: the checkpoint ends before it",
            "saved from the model alone",
            r"\(model, state\)",
        ),
    ),
    Row(
        "restore-truncated-file",
        Model,
        lambda m: lm.restore(m, damaged(cut=slice(0, 60)), spec(5)),
        lm.InitError,
        (r"Model\.head\.weight: expected float32\[2, 5\]", "damaged", "EOF"),
    ),
    Row(
        "restore-corrupt-header",
        Model,
        lambda m: lm.restore(m, damaged(replace=b"\x93NUMPY\x01\x00{'descr" + b"x" * 10), spec(5)),
        lm.InitError,
        (r"Model\.head\.weight: expected float32\[2, 5\]", "damaged, or of another format"),
    ),
    Row(
        "restore-random-bytes",
        Model,
        lambda m: lm.restore(m, damaged(replace=bytes(range(256)) * 2), spec(5)),
        lm.InitError,
        (r"Model\.head\.weight: expected float32\[2, 5\]", "damaged, or of another format"),
    ),
    Row(
        "restore-empty-file",
        Model,
        lambda m: lm.restore(m, damaged(replace=b""), spec(5)),
        lm.InitError,
        (r"Model\.head\.weight: expected float32\[2, 5\]", "is empty", "an intact file"),
    ),
]


def saved(model):
    file = io.BytesIO()
    eqx.tree_serialise_leaves(file, model)
    file.seek(0)
    return file


def fields_of(tree: Any) -> list[Any]:
    """The objects a misuse must not replace: a module's fields, a container's items."""
    if isinstance(tree, eqx.Module):
        return list(vars(tree).items())
    return list(tree) if isinstance(tree, list) else []


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_misuse_gets_a_clear_error_and_leaves_the_module_untouched(row: Row):
    module = row.module()
    arrays = jax.tree.map(np.asarray, eqx.filter(module, eqx.is_array))
    fields = fields_of(module)
    with pytest.raises(row.error) as raised:
        row.misuse(module)
    message = "\n".join([str(raised.value), *getattr(raised.value, "__notes__", ())])
    for pattern in row.says:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    after = jax.tree.map(np.asarray, eqx.filter(module, eqx.is_array))
    assert jax.tree.structure(after) == jax.tree.structure(arrays)
    assert all(map(np.array_equal, jax.tree.leaves(after), jax.tree.leaves(arrays)))
    now = fields_of(module)
    assert len(now) == len(fields) and all(a is b or a == b for a, b in zip(now, fields))


def test_every_row_is_in_the_docs_errors_page():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text()
    for phrase in (
        "expected a vector of shape (in_features,)",
        "left 2 fields uninitialized",
        "this value depends on the values of an input",
        "its Initializer raised",
        "rng_init raised",
        "inside a JAX transformation",
        "a traced array was assigned to this static field",
        "lazymod.next_key() was called outside lazymod.init",
        "which has no key and none to fall back to",
        "next_key() was called in the forward pass outside",
        "got the class Model, not a module",
        "the same lazy",
        "lazymod.restore: the checkpoint",
        "UninitializedError",
        "assigning a field",
        "cannot assign to field",
        "called again during init",
        "with a negative dimension",
        "that is not an int",
        "with an empty axis",
        "Python needs the value of an input",
        "was called inside an Initializer",
        "does not fit in 64 bits",
        "a divisor of",
        "takes a sequence with one entry",
        "expected a floating-point input",
        "expected an array",
        "the checkpoint is empty",
        "is not divisible by groups",
        "scalar index",
        "IntOfValues",
        "InitValueError",
        "InitTypeError",
        "which has a negative dimension",
        "expected an integer index",
        "does not fit its shape",
        "No inputs were given",
        "saved from the model alone",
        "must be at least 1",
        "takes the module first",
        "open in text mode",
        "lazymod.restore takes none",
        "is a directory",
        "Did you mean",
        "takes no key",
        "int seed becomes a traced array",
        "Sequential.layers[1] (Linear.__call__)",
        "init never rebuilds a layer",
        "between 0 and 1",
        "was read before anything set it",
        "as lazymod.init_shapes returns them",
    ):
        assert phrase in page, phrase


def test_init_of_an_initialized_model_returns_an_equal_model():
    """Defined behaviour: nothing is lazy any more, so init draws nothing and returns a
    model equal to its argument (whatever the key), as a new tree."""
    model = lm.init(Model(), 0, spec(5))
    again = lm.init(model, 1, spec(5))
    assert again is not model
    np.testing.assert_array_equal(again.head.weight, model.head.weight)
    np.testing.assert_array_equal(again.head.bias, model.head.bias)


def test_nested_init_inside_init_is_an_independent_init():
    class Nested(lm.Module):
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                self.w = lm.init(lm.nn.Linear(3), jax.random.key(5), x).weight
            return x

    outer = lm.init(Nested(), 0, spec(4))
    alone = lm.init(lm.nn.Linear(3), jax.random.key(5), spec(4))
    np.testing.assert_array_equal(outer.w, alone.weight)


def test_an_exception_inside_init_leaves_no_state_behind():
    with pytest.raises(lm.InitError):
        lm.init(DataDependent(), 0, spec(3))
    with pytest.raises(lm.InitError, match="outside lazymod.init"):
        lm.next_key()
    model = lm.init(Model(), 0, spec(5))
    assert lm.is_initialized(model)


def test_a_shape_tuple_given_for_a_spec_gets_a_note_with_the_fix():
    with pytest.raises(Exception) as info:
        lm.init(Model(), 0, (784,))
    notes = getattr(info.value, "__notes__", [])
    assert any("args[0] is the tuple (784,)" in n and "ShapeDtypeStruct((784,)" in n for n in notes)


def test_a_shape_list_given_for_a_spec_is_called_a_list():
    with pytest.raises(Exception) as info:
        lm.init(Model(), 0, [1, 784])
    notes = getattr(info.value, "__notes__", [])
    assert any(
        "args[0] is the list [1, 784]" in n and "ShapeDtypeStruct((1, 784), jnp.float32)" in n
        for n in notes
    ), notes


def test_a_stateful_model_given_to_init_is_told_about_init_with_state():
    class Stateful(lm.Module):
        norm: lm.nn.BatchNorm

        def __call__(self, x, state):
            return self.norm(x, state)

    with pytest.raises(TypeError, match="'state'") as info:
        lm.init(Stateful(lm.nn.BatchNorm("batch")), 0, spec(4))
    assert any("lazymod.init_with_state(model, key" in n for n in info.value.__notes__)


def test_notes_name_the_entry_point_the_user_called():
    class Fails(lm.Module):
        def __call__(self, x):
            raise RuntimeError("forward failed")

    for call, entry in (
        (lambda: lm.summary(Fails(), spec(2)), "lazymod.summary"),
        (lambda: lm.init_shapes(Fails(), spec(2)), "lazymod.init_shapes"),
        (lambda: lm.restore(Fails(), io.BytesIO(b""), spec(2)), "lazymod.restore"),
    ):
        with pytest.raises(RuntimeError, match="forward failed") as info:
            call()
        assert f"(while {entry} ran Fails)" in info.value.__notes__


class ConvBeside(lm.Module):
    conv: lm.nn.Conv2d

    def __init__(self):
        self.conv = lm.nn.Conv2d(4, 3)

    def __call__(self, x, y):
        return self.conv(x), y


class RaisesItsOwn(lm.Module):
    def __call__(self, x):
        raise TypeError("cannot use MyPlaceholder here")


def message_of(misuse: Callable[[], Any]) -> str:
    with pytest.raises(Exception) as raised:
        misuse()
    return "\n".join([str(raised.value), *getattr(raised.value, "__notes__", ())])


def test_a_note_is_added_only_where_it_says_something_new():
    message = message_of(lambda: lm.init(lm.nn.Conv2d(4, 3), 0, spec(3, 8, 8, dtype=jnp.int32)))
    assert message.count("float dtype such as jnp.float32") == 1, message
    # lazymod's message gives the integer fix; the float16 beside it is no cause.
    integer, half = spec(3, 8, 8, dtype=jnp.int32), spec(2, dtype=jnp.float16)
    message = message_of(lambda: lm.init(ConvBeside(), 0, integer, half))
    assert "expected a floating-point input" in message and "dtype=" not in message, message
    # A user's own error that happens to say "Placeholder" is not about lazy fields.
    message = message_of(lambda: lm.init(RaisesItsOwn(), 0, spec(3)))
    assert "MyPlaceholder" in message and "read before anything set it" not in message


def test_equinox_argument_habits_are_refused_with_the_lazymod_call():
    # Equinox's order gives the input size first: `Linear(784, 10)` would put 10 in
    # `use_bias`. Run without the test suite's jaxtyping hook, which would refuse these
    # arguments first, so the message is the one a user sees.
    script = textwrap.dedent(
        """
        import lazymod as lm
        for make in (
            lambda: lm.nn.Linear(784, 10),
            lambda: lm.nn.LayerNorm(64),
            lambda: lm.nn.GroupNorm(8, 32),
            lambda: lm.nn.MLP(784, 10, 64, 2),
            lambda: lm.nn.Conv2d(16, 3, use_bias="no"),
            lambda: lm.nn.LayerNorm(eps=0),  # a number, not a size: accepted
        ):
            try:
                make()
            except TypeError as error:
                print(error)
            else:
                print("accepted")
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    printed = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0, printed.stderr
    linear, layer_norm, group_norm, mlp, conv, zero_eps = printed.stdout.splitlines()
    assert zero_eps == "accepted"
    assert linear == (
        "lazymod.nn.Linear: use_bias must be a bool; got int 10. lazymod.nn.Linear infers "
        "its input size, so it takes Equinox's arguments without it: "
        "equinox.nn.Linear(784, 10) is lazymod.nn.Linear(10)."
    )
    assert layer_norm.startswith(
        "lazymod.nn.LayerNorm: eps must be a float (such as 1e-5); got int 64."
    )
    assert layer_norm.endswith("equinox.nn.LayerNorm(64) is lazymod.nn.LayerNorm().")
    assert "equinox.nn.GroupNorm(8, 32) is lazymod.nn.GroupNorm(8)." in group_norm
    assert mlp.startswith(
        "lazymod.nn.MLP: activation must be a function, such as jax.nn.relu; got int 2."
    )
    assert mlp.endswith("equinox.nn.MLP(784, 10, 64, 2) is lazymod.nn.MLP(10, 64, 2).")
    assert conv == "lazymod.nn.Conv2d: use_bias must be a bool; got str 'no'."


class _KeepsItsArgument(eqx.Module):
    def __call__(self, x, *, key=None):
        raise ValueError(f"wrong shape {x.shape}")


class _RebindsItsArgument(eqx.Module):
    def __call__(self, x, *, key=None):
        x = x[None]
        raise ValueError(f"wrong shape {x.shape}")


@pytest.mark.parametrize(
    "layer, says",
    [
        (_KeepsItsArgument(), "called with inputs (float32[3])"),
        (_RebindsItsArgument(), "whose arguments were (float32[1,3]) when it raised"),
    ],
)
def test_the_raised_in_note_says_when_an_argument_may_have_changed(layer, says):
    with pytest.raises(ValueError) as raised:
        lm.init(eqx.nn.Sequential([lm.nn.Linear(3), layer]), 0, spec(2))
    assert any(says in note for note in raised.value.__notes__), raised.value.__notes__
