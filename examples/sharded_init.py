"""Initialize a model directly into its shards on a 2x4 device mesh, then train a step.

Runs on 8 host-platform CPU devices (it sets XLA_FLAGS itself), so it needs no
accelerator:

    python examples/sharded_init.py [--smoke] [--processes N]

Each weight matrix is split over the mesh's "model" axis as lazymod creates it: no
device ever holds a full copy, and the values equal an unsharded init bit for bit.

With `--processes 2` (or 4, or 8) the same code runs as that many processes of one
`jax.distributed` job on this machine (`local_cluster.py`, over 127.0.0.1 only), 8/N
devices each, as it would on N hosts: each process computes only the shards its own
devices hold, and process 0 prints.
"""

import argparse
import os
import sys

import local_cluster  # next to this file; it does not import jax


if not local_cluster.is_worker():  # a worker's devices are set by its launcher
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

import lazymod as lm  # noqa: E402


class Block(lm.Module):
    """A Transformer-style feed-forward block: LayerNorm, expand, GELU, project back."""

    norm: lm.nn.Lambda
    expand: lm.nn.Linear
    project: lm.nn.Linear

    def __init__(self, hidden: int, width: int):
        self.norm = lm.nn.Lambda(lambda x: (x - x.mean()) / (x.std() + 1e-5))
        self.expand = lm.nn.Linear(hidden)
        self.project = lm.nn.Linear(width)

    def __call__(self, x):
        return x + self.project(jax.nn.gelu(self.expand(self.norm(x))))


class Model(lm.Module):
    blocks: list
    head: lm.nn.Linear

    def __init__(self, width: int, hidden: int, depth: int, classes: int):
        self.blocks = [Block(hidden, width) for _ in range(depth)]
        self.head = lm.nn.Linear(classes)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small model, for CI")
    parser.add_argument(
        "--processes", type=int, default=1, help="run as N local processes (N divides 8)"
    )
    options = parser.parse_args()
    if options.processes < 1 or 8 % options.processes:
        parser.error(f"--processes must divide 8, got {options.processes}")
    if options.processes > 1 and not local_cluster.is_worker():
        result = local_cluster.run(
            __file__,
            sys.argv[1:],
            processes=options.processes,
            devices_per_process=8 // options.processes,
            timeout=600,
        )
        print(result.processes[0].stdout, end="")
        print(f"{options.processes} processes finished in {result.seconds:.1f} s")
        return
    if local_cluster.is_worker():
        local_cluster.connect()  # before anything creates the devices
    # Every process runs every step; process 0 reports.
    log = print if jax.process_index() == 0 else lambda *args: None
    width, hidden, depth = (64, 256, 2) if options.smoke else (512, 2048, 12)

    # Auto axes: XLA propagates the weights' shardings through the training step.
    auto = jax.sharding.AxisType.Auto
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(auto, auto))

    def rule(path: str, leaf: jax.ShapeDtypeStruct) -> NamedSharding | None:
        """Split every weight matrix's output axis over "model"; replicate the rest."""
        if path.endswith(".weight") and leaf.ndim == 2 and leaf.shape[0] % 4 == 0:
            return NamedSharding(mesh, PartitionSpec("model", None))
        return None

    model = Model(width, hidden, depth, classes=8)
    spec = jax.ShapeDtypeStruct((width,), jnp.float32)
    sharded = lm.init(model, 0, spec, sharding=rule)

    weight = sharded.blocks[0].expand.weight
    shard_shapes = {shard.data.shape for shard in weight.addressable_shards}
    log(f"blocks[0].expand.weight {weight.shape} is held as shards {sorted(shard_shapes)}")
    assert all(shape[0] == weight.shape[0] // 4 for shape in shard_shapes)

    # Each process compares the shards it holds with an unsharded init on its own device.
    plain = lm.init(model, 0, spec)
    same = jax.tree.map(
        lambda a, b: all(
            np.array_equal(shard.data, np.asarray(b)[shard.index]) for shard in a.addressable_shards
        ),
        eqx.filter(sharded, eqx.is_array),
        eqx.filter(plain, eqx.is_array),
    )
    assert all(jax.tree.leaves(same)), "sharded values differ from an unsharded init"

    @eqx.filter_jit
    def step(model, x, y):
        def loss(model):
            logits = jax.vmap(model)(x)
            return jnp.mean(
                jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, y[:, None], 1)
            )

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates = jax.tree.map(lambda g: -0.1 * g, grads)
        return eqx.apply_updates(model, updates), value

    x = jax.random.normal(jax.random.key(1), (16, width))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 8)
    trained, loss = step(sharded, x, y)
    log(f"one training step on the mesh: loss {float(loss):.4f}")
    assert trained.blocks[0].expand.weight.sharding.is_equivalent_to(weight.sharding, 2)


if __name__ == "__main__":
    main()
