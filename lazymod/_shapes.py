"""`lazymod.init_shapes`: the tree `lazymod.init` would return, from its trace alone."""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

from ._context import at_top_level
from ._host_keys import key_of_seed
from ._init import abstract_key, initialize
from ._numpy_leaves import described, is_numpy
from ._sharding import Sharding, with_shardings
from ._trace import NEEDS_VALUES


def init_shapes(
    module: Any,
    /,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    partial: bool = False,
    with_state: bool = False,
    sharding: Sharding = None,
    **kwargs: Any,
) -> Any:
    """The tree `lazymod.init` would return, with a `jax.ShapeDtypeStruct` in place of
    every array. No array is allocated and no random number drawn, whatever the sizes
    (NumPy code in the forward pass runs on the module's NumPy arrays, as in init).

    Takes the same arguments as [`lazymod.init`][], less the key. Use it to inspect a
    model, or as the skeleton to load a checkpoint into with
    `eqx.tree_deserialise_leaves`. With `with_state=True`, it is the pair
    [`lazymod.init_with_state`][] would return: the model and its `eqx.nn.State`, both
    of shapes (the method then takes the state last, as there). With `sharding=` (as
    `lazymod.init` takes it), each `ShapeDtypeStruct` carries its array's sharding:
    the abstract state to pass as `out_shardings`, or as the target of a sharded
    restore (see [Sharding](sharding.md)); a sharding that does not fit its array is
    refused, as init refuses it. A NumPy array, which `lazymod.init` leaves
    as it is, is described in its own dtype (float64 stays float64 without x64) and
    with no sharding.

    !!! example

        ```python
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class Linear(lm.Module):
            features_out: int
            w: jax.Array = lm.lazy()

            def __call__(self, x):
                if self.initializing():
                    self.w = jax.random.normal(
                        lm.next_key(), (x.shape[-1], self.features_out)
                    )
                return x @ self.w

        big = lm.init_shapes(Linear(100_000), jax.ShapeDtypeStruct((100_000,), jnp.float32))
        assert big.w.shape == (100_000, 100_000)
        ```
    """

    shapes = shapes_of(
        module,
        args=args,
        kwargs=kwargs,
        method=method,
        partial=partial,
        with_state=with_state,
        sharding=sharding,
        entry="lazymod.init_shapes",
    )
    return jtu.tree_map(described, shapes)


def shapes_of(
    module: Any,
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str | Callable[..., Any] | None,
    partial: bool = False,
    with_state: bool = False,
    sharding: Sharding = None,
    entry: str,
) -> Any:
    """`init_shapes`, for the entry point `entry` (named in error notes), except that a
    NumPy array init leaves in the tree (a field the module holds, or one init assigns
    a NumPy value) is that array, as init returns it: NumPy, in its own dtype, and
    given no sharding (init places none)."""
    shapes = _shapes(module, args, kwargs, method, partial, with_state, entry)
    if sharding is None:
        return shapes
    return with_shardings(module, shapes, sharding, with_state, partial)


def _shapes(
    module: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    method: str | Callable[..., Any] | None,
    partial: bool,
    with_state: bool,
    entry: str,
) -> Any:

    def run(module: Any, key: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result, _ = initialize(
            module,
            key,
            args=args,
            kwargs=kwargs,
            method=method,
            partial=partial,
            with_state=with_state,
            abstract=True,
            entry=entry,
        )
        return result

    leaves = jax.tree.leaves((module, args, kwargs))
    if at_top_level() and not any(eqx.is_array(leaf) for leaf in leaves):
        # Nothing to keep from being computed: trace directly (the trace is kept for
        # later inits, see _cache.py), with a key whose values nothing reads; code that
        # needs a value's value is run under jax.eval_shape below.
        try:
            return run(module, _shapes_key(), args, kwargs)
        except NEEDS_VALUES:
            pass
    # The forward pass's own keyword arguments (a `key=` among them) travel as one dict.
    return eval_shape_holding_numpy(run, module, abstract_key(), args, kwargs)


def eval_shape_holding_numpy(function: Callable[..., Any], module: Any, *args: Any) -> Any:
    """`eqx.filter_eval_shape(function, module, *args)`, except for NumPy arrays. The
    module's are constants to init, which leaves them as they are: they are closed
    over, not made abstract (which would make a float64 table float32 without x64,
    and its values unreadable), and every NumPy array of the result is returned as
    it is."""
    held, rest = eqx.partition(module, is_numpy)
    host: list[Any] = []

    def holding(rest: Any, *args: Any) -> Any:
        numpy, traced = eqx.partition(function(eqx.combine(rest, held), *args), is_numpy)
        host.append(numpy)
        return traced

    traced = eqx.filter_eval_shape(holding, rest, *args)
    return eqx.combine(traced, host[-1])


@functools.cache
def _shapes_key() -> jax.Array:
    """The key of an init that computes nothing (its trace alone gives the shapes)."""
    return key_of_seed(0)
