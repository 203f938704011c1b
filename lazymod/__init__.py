"""lazymod: lazy, shape-inferred initialization for Equinox modules."""

from . import nn as nn
from ._cache import clear_caches as clear_caches
from ._checkpoint import restore_sharded as restore_sharded, save_sharded as save_sharded
from ._errors import (
    InitError as InitError,
    InitTypeError as InitTypeError,
    InitValueError as InitValueError,
    UninitializedError as UninitializedError,
)
from ._init import init as init, init_with_state as init_with_state
from ._module import Module as Module
from ._partitions import AxisRules as AxisRules
from ._restore import restore as restore
from ._running import next_key as next_key
from ._sentinels import (
    Initializer as Initializer,
    is_initialized as is_initialized,
    lazy as lazy,
)
from ._shapes import init_shapes as init_shapes
from ._summary import summary as summary


__version__ = "0.1.0"
