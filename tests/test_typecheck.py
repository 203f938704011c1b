"""Type-checked models: jaxtyping + beartype annotations are checked at init, on the
spec, so a wrong spec fails at lm.init rather than at the first real batch."""

import subprocess
import sys

import equinox as eqx
import jax.numpy as jnp
import pytest
from beartype import beartype
from jaxtyping import Array, Float, jaxtyped, TypeCheckError

import lazymod as lm

from .helpers import spec


class Classifier(lm.Module):
    linear: lm.nn.Linear

    def __init__(self):
        self.linear = lm.nn.Linear(10)

    @jaxtyped(typechecker=beartype)
    def __call__(self, image: Float[Array, "1 28 28"]) -> Float[Array, "10"]:
        return self.linear(jnp.ravel(image))


def test_annotated_model_inits_on_a_matching_spec_and_runs():
    model = lm.init(Classifier(), 0, spec(1, 28, 28))
    assert model.linear.weight.shape == (10, 784)
    assert model(jnp.zeros((1, 28, 28))).shape == (10,)


@pytest.mark.parametrize("shape", [(3, 28, 28), (28, 28)])
def test_a_wrong_spec_fails_at_init_with_jaxtypings_message(shape):
    with pytest.raises(TypeCheckError, match="image") as info:
        lm.init(Classifier(), 0, spec(*shape))
    assert "lazymod.init ran Classifier" in "".join(getattr(info.value, "__notes__", []))


def test_a_wrong_dtype_fails_at_init():
    with pytest.raises(TypeCheckError):
        lm.init(Classifier(), 0, spec(1, 28, 28, dtype=jnp.int32))


def test_lazymod_under_a_users_import_hook():
    # A user who installs jaxtyping's import hook over lazymod (with beartype) gets
    # every lazymod annotation checked, and init still works.
    code = """
from jaxtyping import install_import_hook
with install_import_hook("lazymod", "beartype.beartype"):
    import lazymod as lm
import jax, jax.numpy as jnp, equinox as eqx
layer = lm.init(lm.nn.Linear(3), 0, jax.ShapeDtypeStruct((4,), jnp.float32))
assert isinstance(layer, eqx.nn.Linear)
try:
    lm.next_key(3)
except TypeError as error:  # checked by our own code or by the hook: either is fine
    print("rejected", type(error).__name__)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "rejected" in result.stdout


def test_equinox_layers_come_out_typed_as_equinox_layers():
    @jaxtyped(typechecker=beartype)
    def needs_linear(layer: eqx.nn.Linear) -> int:
        return layer.out_features

    assert needs_linear(lm.init(lm.nn.Linear(7), 0, spec(2))) == 7
