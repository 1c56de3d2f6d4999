"""docs/api.md is generated from the code's docstrings and must match them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parents[2] / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_current():
    gen = _generator()
    committed = (DOCS / "api.md").read_text(encoding="utf-8")
    assert gen.render() == committed, "docs/api.md is stale: run `python docs/gen_api.py`"


def test_api_reference_documents_every_listed_object():
    """Every object named in SECTIONS has a heading, its signature and its docstring's first line."""
    import importlib

    gen = _generator()
    text = gen.render()
    for _title, _intro, entries in gen.SECTIONS:
        for module, name, members in entries:
            obj = getattr(importlib.import_module(module), name)
            assert f"### `{module}.{name}`" in text
            first = (gen.own_doc(obj) or "").splitlines()
            if first:
                assert gen._doc_to_markdown(first[0]) in text, f"{module}.{name}: docstring missing"
            for member in members:
                assert f"#### `{name}.{member}`" in text, f"{name}.{member} missing"


def test_google_docstring_sections_become_markdown():
    gen = _generator()
    doc = (
        "Do a thing.\n\nArgs:\n    path: the file.\n    n_boot (int): replicates,\n"
        "        at least 0.\n\nReturns:\n    The folder.\n\n>>> f(1)\n2\n"
    )
    md = gen._doc_to_markdown(doc)
    assert "**Args**" in md and "**Returns**" in md
    assert "- `path`: the file." in md
    assert "- `n_boot` (int): replicates, at least 0." in md
    assert "```python\n>>> f(1)\n2\n```" in md
