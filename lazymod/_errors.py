from typing import Any


class InitError(RuntimeError):
    """Raised when `lazymod.init` cannot materialize a module.

    The message names the module path and the field, says what went wrong and what to
    do about it: an `Initializer` that failed, a value that depends on the values of a
    `jax.ShapeDtypeStruct` input, fields that the inputs never reached, or
    `lazymod.next_key()` called outside `lazymod.init`.

    A problem with the shape or the value of an input is an `InitValueError` and one
    with its type or dtype an `InitTypeError`, so that `except ValueError` and
    `except TypeError` catch them as they catch Equinox's errors:

    ```python
    import jax, jax.numpy as jnp, lazymod as lm

    try:
        lm.init(lm.nn.Linear(2), 0, jax.ShapeDtypeStruct((8, 3), jnp.float32))
    except ValueError as error:  # a batched input: lm.InitValueError
        assert isinstance(error, lm.InitError)
    ```
    """


class InitValueError(InitError, ValueError):
    """An `InitError` about the shape or the value of an input: an input of the wrong
    rank, an empty axis, a size that `groups=` or `num_heads=` does not divide. It is
    a `ValueError` too, as Equinox's errors for a bad shape are."""


class InitTypeError(InitError, TypeError):
    """An `InitError` about the type or dtype of an input: something that is not an
    array, an integer input into a convolution, Python control flow on the values of
    a spec. It is a `TypeError` too, as JAX's and Equinox's errors for these are."""


def init_error_like(error: BaseException) -> type[InitError]:
    """The `InitError` class that keeps `error` catchable as it was: `InitValueError`
    for a `ValueError`, `InitTypeError` for a `TypeError`, else `InitError`."""
    if isinstance(error, ValueError):
        return InitValueError
    if isinstance(error, TypeError):
        return InitTypeError
    return InitError


class UninitializedError(RuntimeError):
    """Raised when a module that still holds a lazy placeholder or an `Initializer` is
    called. Call `lazymod.init(model, key, *inputs)` first and use the module it
    returns.
    """

    def __init__(self, message: str, module: Any = None):
        super().__init__(message)
        self.module = module  # the module that was called, to name its path
