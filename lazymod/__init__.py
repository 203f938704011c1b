"""lazymod: lazy, shape-inferred initialization for Equinox modules."""

from ._context import next_key as next_key
from ._errors import InitError as InitError, UninitializedError as UninitializedError
from ._init import init as init, init_shapes as init_shapes
from ._module import Module as Module
from ._sentinels import (
    Initializer as Initializer,
    is_initialized as is_initialized,
    lazy as lazy,
)


__version__ = "0.1.0"
