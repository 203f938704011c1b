"""The Threefry-2x32 hash written with array operators only, so that it runs on NumPy
arrays (keys derived in host memory, `_host_keys.py`) and on JAX arrays inside the
compiled programs that compute values (`_programs.py`) alike.

Inside a program it replaces `jax.extend.random.threefry2x32_p`, whose CPU lowering is a
rolled `fori_loop`: XLA cannot fuse a loop with the operations around it, so every
round's intermediates go through memory. Unrolled, the hash and the sampler around it
are one fused loop over the elements. For a program drawing 2**20 uniform floats on
the benchmarks' 2-core CPU (`python -m benchmarks.programs`): 39 ms to compile instead
of 106 ms, and 0.76 ms to run instead of 1.41 ms. The bits are the same
(`tests/test_evaluate.py` checks them against the primitive).

```python
import numpy as np
from lazymod._threefry import threefry2x32

counters = np.arange(4, dtype=np.uint32)
first, second = threefry2x32(np.uint32(0), np.uint32(42), np.zeros_like(counters), counters)
```
"""

from typing import Any, TypeVar

import numpy as np


ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = 0x1BD11BDA

_Words = TypeVar("_Words")


def threefry2x32(k1: Any, k2: Any, x1: _Words, x2: _Words) -> tuple[_Words, _Words]:
    """The Threefry-2x32 hash of the counter pairs `(x1[i], x2[i])` under the key words
    `(k1[i], k2[i])`, all uint32 (NumPy or JAX arrays, broadcast together), bit for bit
    as `jax.extend.random.threefry2x32_p` computes it."""
    with np.errstate(over="ignore"):  # NumPy's uint32 arithmetic wraps, as JAX's does
        ks = (k1, k2, k1 ^ k2 ^ np.uint32(PARITY))
        x = [x1 + ks[0], x2 + ks[1]]
        for i in range(5):
            for r in ROTATIONS[i % 2]:
                x[0] = x[0] + x[1]
                x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
                x[1] = x[0] ^ x[1]
            x[0] = x[0] + ks[(i + 1) % 3]
            x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x[0], x[1]
