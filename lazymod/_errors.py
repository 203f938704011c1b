from typing import Any


class InitError(RuntimeError):
    """Raised when `lazymod.init` cannot materialize a module.

    The message names the module path and the field, says what went wrong and what to
    do about it: an `Initializer` that failed, a value that depends on the values of a
    `jax.ShapeDtypeStruct` input, fields that the inputs never reached, or
    `lazymod.next_key()` called outside `lazymod.init`.
    """


class UninitializedError(RuntimeError):
    """Raised when a module that still holds a lazy placeholder or an `Initializer` is
    called. Call `lazymod.init(model, key, *inputs)` first and use the module it
    returns.
    """

    def __init__(self, message: str, module: Any = None):
        super().__init__(message)
        self.module = module  # the module that was called, to name its path
