"""The cyclic garbage collector, paused while an init runs.

Tracing a forward pass makes many short-lived objects in reference cycles (tracers,
jaxpr equations, closures); the collector's passes over them took a third of a deep
model's init. Reference counting still frees everything acyclic at once, and the
collector runs again as usual after init."""

import contextlib
import gc
import threading
from collections.abc import Iterator


_lock = threading.Lock()
_running = 0  # inits running now, in any thread
_resume = False  # whether the collector was on when the first of them began


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Turn the cyclic garbage collector off for the duration, unless it was off
    already; concurrent and nested inits turn it back on when the last one ends.

    ```python
    import gc
    from lazymod._collection import collection_paused

    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    ```
    """
    global _running, _resume
    with _lock:
        if _running == 0:
            _resume = gc.isenabled()
            gc.disable()
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _resume:
                gc.enable()
