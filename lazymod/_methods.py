"""Calling a module's own method without Equinox's `BoundMethod`.

Reading a method from an `eqx.Module` (`module.rng_init`) makes a `BoundMethod`, a
pytree that `jax.jit` can take, at every access: about 16 us, measured with `timeit` on
an `lm.nn.Linear`. Init calls a few such methods on every layer (`initializing`,
`_build`, `_init_result`, `rng_init`), so it calls them through the class instead.

```python
import lazymod as lm
from lazymod._methods import call_method

assert call_method(lm.nn.Linear(3), "initializing") is False  # outside init
```
"""

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any


def call_method(module: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """`module.name(*args, **kwargs)`, without making a `BoundMethod` when the method is
    a plain function of the class (a `staticmethod`, `classmethod` or anything else is
    read from the module as usual)."""
    function = _plain_function(type(module), name)
    if function is not None:
        return function(module, *args, **kwargs)
    return getattr(module, name)(*args, **kwargs)


@functools.lru_cache(maxsize=1024)  # (class, method name): a few per process
def _plain_function(cls: type, name: str) -> Callable[..., Any] | None:
    method = inspect.getattr_static(cls, name, None)
    return method if isinstance(method, types.FunctionType) else None
