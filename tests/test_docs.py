"""Every ```python block in the README, in docs/ and in the docstrings of lazymod's
public names is run here, so the documentation cannot drift from the code. The blocks
of one page run in order in one namespace, as a reader would run them."""

import inspect
import re
import textwrap
from pathlib import Path

import pytest

import lazymod


ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(match.group(2)) for match in BLOCK.finditer(text)]


def public_objects() -> list[tuple[str, object]]:
    """lazymod's public names and lazymod.nn's own layers (not the names it re-exports
    from equinox.nn), with their public methods."""
    objects = []
    for prefix, namespace in (("lazymod", lazymod), ("lazymod.nn", lazymod.nn)):
        for name in dir(namespace):
            obj = getattr(namespace, name)
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            if not getattr(obj, "__module__", "").startswith("lazymod"):
                continue
            objects.append((f"{prefix}.{name}", obj))
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if (not attr.startswith("_") or attr in ("__init__", "__call__")) and callable(
                        member
                    ):
                        objects.append((f"{prefix}.{name}.{attr}", member))
    return objects


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path) -> None:
    blocks = python_blocks(page.read_text())
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for number, block in enumerate(blocks):
        code = compile(block, f"{page.name}[block {number}]", "exec")
        exec(code, namespace)


@pytest.mark.parametrize(
    "name, obj", public_objects(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_docstring_examples_run(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    for number, block in enumerate(python_blocks(doc + "\n")):
        exec(compile(block, f"{name}[block {number}]", "exec"), {"__name__": name})


def test_every_page_has_an_example() -> None:
    for page in PAGES:
        assert python_blocks(page.read_text()), f"{page} has no ```python example"
