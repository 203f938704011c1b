"""The benchmark compares like with like: each model built by lazymod has the same
parameter and state shapes as the one written by hand in Equinox, and the benchmark's
report is written from results of the worker's format, each case shown once."""

import equinox as eqx
import jax
import numpy as np
import pytest

from benchmarks import __main__ as bench, models, report


def shapes(tree):
    leaves = jax.tree.leaves(tree)
    return [
        (leaf.shape, leaf.dtype)
        for leaf in leaves
        if eqx.is_array(leaf) or isinstance(leaf, jax.ShapeDtypeStruct)
    ]


@pytest.mark.parametrize("model", list(models.BUILDERS))
def test_lazymod_and_equinox_build_the_same_model(model, monkeypatch):
    # Smaller sizes, same structure: the test checks the builders, not the speed.
    monkeypatch.setattr(models, "MLP_WIDTH", 16)
    monkeypatch.setattr(models, "CNN_CHANNELS", (4, 8))
    monkeypatch.setattr(models, "CNN_INPUT", (3, 8, 8))
    small = dict(blocks=2, width=16, heads=2, hidden=32, seq_len=4)
    monkeypatch.setattr(models, "TRANSFORMER", small)
    monkeypatch.setattr(models, "BIG_TRANSFORMER", {**small, "blocks": 3})
    depth = 5 if model in ("deep_mlp", "user_list") else None
    ours = models.builder("lazymod", model, depth)(jax.random.key(0), 2)
    theirs = models.builder("equinox", model, depth)(jax.random.key(0), 2)
    assert shapes(ours) and shapes(ours) == shapes(theirs)
    if model == "init_shapes":  # nothing allocated, on either side
        assert not jax.tree.leaves(eqx.filter([ours, theirs], eqx.is_array))
    # Same Equinox layer types in the same order (the user-level classes differ).
    ignore = {"LazyCNN", "LazyBlock", "LazyUserList", "EquinoxCNN", "EquinoxBlock"}
    ignore |= {"EquinoxUserList"}
    assert [n for n in module_types(ours) if n not in ignore] == [
        n for n in module_types(theirs) if n not in ignore
    ]


def module_types(tree) -> list[str]:
    """The type names of every module in `tree`, parents before children."""
    names = []

    def visit(node):
        children = jax.tree.leaves(
            node, is_leaf=lambda x: x is not node and isinstance(x, eqx.Module)
        )
        for child in children:
            if isinstance(child, eqx.Module) and child is not node:
                names.append(type(child).__name__)
                visit(child)

    visit([tree])
    return names


@pytest.mark.parametrize("quick", [True, False])
def test_the_report_shows_each_case_once(quick, tmp_path):
    pytest.importorskip("matplotlib")
    cases, sweeps = bench.cases(quick), bench.sweeps(quick)
    runs = bench.runs_of(cases, sweeps)
    assert len(runs) == len({report.describe(run) for run in runs})  # each measured once
    for i, run in enumerate(runs):
        # Distinct times, none a substring of another: 2.00 s, 2.01 s, ...; 500 ms, 501 ms, ...
        run.update(first=2 + i / 100, warm=0.5 + i / 1000, peak_rss_mb=300.0, rss_before_mb=200.0)
        run.update(parameter_mb=4.0, parameters=1_000_000)
    results = {
        "machine": dict(platform="test", python="3", cpus=2, repeats=1, warm=3, quick=quick),
        "cases": cases,
        "sweeps": sweeps,
        "runs": runs,
        "train_step": {
            f"{name}_{what}": [0.01]
            for name in ("lazymod", "equinox")
            for what in ("step", "dispatch")
        },
        "floors": {
            "mlp": {"values": 0.1, "trace": 0.1},
            "deep_mlp": {"values": 0.1, "trace": 0.1},
            "user_list": {"values": 0.1, "trace": 0.1},
            "init_shapes": {"trace": 0.1},
        },
        "seconds": 100.0,
    }
    page = report.write(results, tmp_path / "benchmarks.md")
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    for model in results["floors"]:  # each reference in a row of its own
        depth = [case["depth"] for case in cases if case["model"] == model][0]
        name = f"| {report.case_name(model, depth)} | "
        assert sum(row.startswith(name) for row in rows) == 1, name
    for case in cases:
        name = f"| {report.case_name(case['model'], case['depth'])} ("
        assert sum(row.startswith(name) for row in rows) == 1, name
    for run in runs:  # every time in one cell of the page, no more
        for field in ("first", "warm"):
            assert page.count(f" {report.seconds(run[field])}") == 1, report.describe(run)
    assert {p.name for p in (tmp_path / "benchmarks").iterdir()} == {
        "results.json",
        "depth.png",
        "batch.png",
    }
    assert report.load(tmp_path / "benchmarks" / "results.json") == results


def test_the_sharded_table_puts_the_libraries_side_by_side():
    from benchmarks import sharded

    rows = [
        {
            "case": "c",
            "framework": "lazymod",
            "seconds": 1.5,
            "staging_mib": 4.2,
            "peak_rss_mib": 700,
        },
        {
            "case": "c",
            "framework": "flax",
            "seconds": 1.2,
            "staging_mib": 2.9,
            "peak_rss_mib": 1300,
        },
    ]
    line = sharded.table(rows).splitlines()[-1]
    assert line == "| c | 4.2 MiB | 2.9 MiB | 700 MiB | 1300 MiB | 1.50 s | 1.20 s |"
    assert [case[3] for case in sharded.CASES] == [1, 2]  # one process, then two


@pytest.mark.parametrize("block", [False, True])
def test_the_program_benchmark_compares_hashes_that_agree(block):
    # `python -m benchmarks.programs` times both hashes on the same program; they must
    # draw the same values, or the comparison would be of different work.
    from benchmarks import programs

    results = programs.measure(2**16, block, runs=1)
    ours, theirs = (results[name][2] for name in programs.HASHES)
    assert ours.shape == (2, 2**15) and np.array_equal(ours, theirs)
