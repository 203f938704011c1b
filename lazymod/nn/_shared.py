from collections.abc import Callable
from typing import Any

import equinox as eqx

from .._errors import InitError
from .._module import Module
from .._running import describe
from .._tree import init_result


class Shared(Module):
    """`equinox.nn.Shared` for lazy layers: ties part of `pytree` (`where`) to another
    part (`get`), as Equinox does, when the tied arrays do not exist until
    `lazymod.init` has built the layers. After init it is an `eqx.nn.Shared` around
    the Equinox layers. Calling it returns the pytree; during init, before the layers
    are built, the pytree untied.

    !!! example

        ```python
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        import lazymod as lm

        class LanguageModel(lm.Module):
            shared: lm.nn.Shared

            def __init__(self):
                embedding = eqx.nn.Embedding(100, 32, key=jax.random.key(0))
                linear = lm.nn.Linear(100, use_bias=False)  # in_features inferred
                where = lambda pair: pair[1].weight
                get = lambda pair: pair[0].weight
                self.shared = lm.nn.Shared((embedding, linear), where, get)

            def __call__(self, tokens):
                embedding, linear = self.shared()
                return jax.vmap(linear)(jax.vmap(embedding)(tokens))

        spec = jax.ShapeDtypeStruct((10,), jnp.int32)
        model = lm.init(LanguageModel(), 0, spec)
        assert type(model.shared) is eqx.nn.Shared
        embedding, linear = model.shared()
        assert linear.weight is embedding.weight  # tied: one array
        ```
    """

    pytree: Any
    where: Callable[[Any], Any] = eqx.field(static=True)
    get: Callable[[Any], Any] = eqx.field(static=True)

    def __init__(self, pytree: Any, where: Callable[[Any], Any], get: Callable[[Any], Any]):
        """**Arguments:** as `equinox.nn.Shared`.

        - `pytree`: the layers, lazy or not, some of whose parts are tied.
        - `where`: a function from `pytree` to the parts that are replaced.
        - `get`: a function from `pytree` to the parts they are tied to, with the same
            structure, shapes and dtypes.
        """
        self.pytree = pytree
        self.where = where
        self.get = get

    def __call__(self) -> Any:
        """The pytree: tied after init, untied while init builds its layers."""
        return self.pytree

    def _init_result(self) -> eqx.nn.Shared:
        pytree = init_result(self.pytree)
        try:
            return eqx.nn.Shared(pytree, self.where, self.get)
        except Exception as error:
            raise InitError(
                f"{describe(self)} (Shared): equinox.nn.Shared could not tie the built "
                f"layers: {type(error).__name__}: {error}. `where` and `get` must select "
                "parts of the same structure, shapes and dtypes."
            ) from error
