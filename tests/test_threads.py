"""lm.init from several threads at once: each init has its own context (a ContextVar),
so concurrent inits give what sequential ones give, and a failing init leaves nothing
behind for the next."""

import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import pytest

import lazymod as lm

from .helpers import spec, tree_bit_equal


class Tower(lm.Module):
    layers: list
    offset: jax.Array = lm.lazy()

    def __init__(self, widths):
        self.layers = [lm.nn.Linear(w) for w in widths]

    def rng_init(self):
        self.offset = jax.random.normal(lm.next_key(), ())

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x + self.offset


class Failing(lm.Module):
    w: jax.Array = lm.lazy()

    def __call__(self, x):
        if self.initializing():
            lm.next_key()  # drawn, then the init fails half-way
            self.w = x * 2  # data-dependent on a spec: an InitError
        return x


JOBS = [((8, 4), 3, 0), ((16, 16, 2), 5, 1), ((4,), 7, 2), ((32, 8), 2, 3)] * 3


def run(job):
    widths, size, seed = job
    return lm.init(Tower(widths), jax.random.key(seed), spec(size))


def test_concurrent_inits_equal_sequential_ones():
    sequential = [run(job) for job in JOBS]
    start = threading.Barrier(4)  # cyclic: each batch of four inits starts together

    def synchronised(job):
        start.wait(timeout=60)
        return run(job)

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(synchronised, JOBS))
    for a, b in zip(sequential, concurrent):
        assert tree_bit_equal(a, b)


def test_a_failing_init_in_one_thread_does_not_disturb_the_others():
    expected = run(JOBS[1])

    def fail(job):
        with pytest.raises(lm.InitError):
            lm.init(Failing(), 0, spec(3))
        return "failed"

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(fail if i % 2 else run, JOBS[1]) for i in range(8)]
        results = [future.result() for future in futures]
    for i, result in enumerate(results):
        if i % 2 == 0:
            assert tree_bit_equal(result, expected)
        else:
            assert result == "failed"


def test_an_exception_inside_init_leaves_no_state_behind_in_the_thread():
    def in_thread():
        with pytest.raises(lm.InitError):
            lm.init(Failing(), 0, spec(3))
        with pytest.raises(lm.InitError, match="outside lazymod.init"):
            lm.next_key()  # no init is running in this thread any more
        return run(JOBS[0])

    with ThreadPoolExecutor(max_workers=1) as pool:
        model = pool.submit(in_thread).result()
    assert tree_bit_equal(model, run(JOBS[0]))
    assert jnp.isfinite(model(jnp.ones(3))).all()


def test_init_pauses_the_garbage_collector_and_turns_it_back_on():
    import gc

    class Checks(lm.Module):
        w: jax.Array = lm.lazy()

        def __call__(self, x):
            if self.initializing():
                seen.append(gc.isenabled())
                self.w = jnp.zeros(x.shape)
            return x

    seen: list[bool] = []
    assert gc.isenabled()
    lm.init(Checks(), 0, jax.ShapeDtypeStruct((2,), jnp.float32))
    assert seen == [False] and gc.isenabled()
    with pytest.raises(TypeError):
        lm.init(Checks(), 0, jax.ShapeDtypeStruct((2.0,), jnp.float32))
    assert gc.isenabled()  # also after an init that raised
    gc.disable()
    try:
        lm.init(Checks(), 0, jax.ShapeDtypeStruct((2,), jnp.float32))
        assert not gc.isenabled()  # left off, as the user had it
    finally:
        gc.enable()
