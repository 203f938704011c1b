from collections.abc import Callable
from typing import Any

import equinox as eqx

from ._init import init


def init_with_state(
    module: Any,
    key: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    **kwargs: Any,
) -> tuple[Any, eqx.nn.State]:
    """The lazy counterpart of `eqx.nn.make_with_state`: initialize a model holding
    stateful layers (such as `lazymod.nn.BatchNorm`) and return `(model, state)`.

    While init runs, `method` (default `__call__`) is called as
    `method(*args, state, **kwargs)` and returns `(output, state)`, as Equinox's
    stateful modules do. The state it returns is discarded: the returned `state` holds
    every `eqx.nn.StateIndex`'s initial value, exactly as `eqx.nn.make_with_state`
    builds it, and the model has its initial states deleted.

    Takes the same arguments as [`lazymod.init`][] (but for `capture_intermediates`).

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Net(lm.Module):
            linear: lm.nn.Linear
            norm: lm.nn.BatchNorm

            def __init__(self):
                self.linear = lm.nn.Linear(4)
                self.norm = lm.nn.BatchNorm("batch", mode="batch")

            def __call__(self, x, state):
                x, state = self.norm(self.linear(x), state)
                return x, state

        spec = jax.ShapeDtypeStruct((3,), jnp.float32)
        model, state = lm.init_with_state(Net(), 0, spec)
        assert model.norm.input_size == 4
        ```
    """
    if args or kwargs or method is not None:
        args = (*args, eqx.nn.State(()))
    initialized = init(module, key, *args, method=method, partial=partial, **kwargs)
    return eqx.nn.make_with_state(lambda: initialized)()
