"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``); not a page (``exclude_docs``).

- Every name of ``hf_dtype.__all__`` has a ``::: ...`` entry in ``docs/api.md`` and a docstring, every member that
  page lists has one, and every parameter of a public signature is described; a gap is logged as a warning, so
  ``mkdocs build --strict`` fails on it. ``tests/test_docs.py`` runs the same check.
- ``<!-- hf_dtype modules -->`` in a page becomes the table of the package's modules, each with the first line of
  its docstring, so the design page cannot drift from the code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_PAGE = ROOT / "docs" / "api.md"
MODULES_MARKER = "<!-- hf_dtype modules -->"
# Parameters whose description is still missing from their docstring's "Args:" (reported; remove an entry once written).
KNOWN_UNDESCRIBED: dict[str, set[str]] = {}

log = logging.getLogger("mkdocs.hooks.hf_dtype")


def api_entries(text: str) -> dict[str, list[str] | None]:
    """The ``::: path`` entries of the API page, each with the members its options list (None: the default members)."""
    entries: dict[str, list[str] | None] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("::: "):
            current = line[4:].strip()
            entries[current] = None
        elif current and (match := re.match(r"\s+members:\s*\[(.*)\]\s*$", line)):
            entries[current] = [name.strip() for name in match.group(1).split(",") if name.strip()]
        elif current and line.strip() and not line.startswith(" "):
            current = None
    return entries


def resolve(path: str) -> Any:
    """The object at a dotted ``path``: an attribute of the longest importable module above it."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(f"nothing to import in {path!r}")


def shadowed_by_a_module(path: str) -> bool:
    """``path`` names a submodule too (``hf_dtype.compact``): the docs' reader, griffe, would show the module."""
    return importlib.util.find_spec(path.rsplit(".", 1)[0]) is not None and _is_module(path)


def _is_module(path: str) -> bool:
    try:
        return importlib.util.find_spec(path) is not None
    except ModuleNotFoundError:
        return False


def described_parameters(doc: str) -> set[str]:
    """The parameter names an ``Args:`` section describes (``a, b:`` entries count for both)."""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
    if start is None:
        return set()
    base = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= base:
            break
        body.append(line)
    indent = min((len(line) - len(line.lstrip()) for line in body if line.strip()), default=0)
    names: set[str] = set()
    for line in body:
        if line.strip() and len(line) - len(line.lstrip()) == indent and ":" in line:
            names |= {name.strip().lstrip("*") for name in line.split(":", 1)[0].split(",")}
    return names


def api_gaps() -> list[str]:
    """What the API page misses: names of ``__all__`` without an entry, entries or members without a docstring,
    parameters without a description."""
    import hf_dtype

    entries = api_entries(API_PAGE.read_text(encoding="utf-8"))
    shown = {path.rsplit(".", 1)[-1] for path in entries}
    gaps = [f"docs/api.md has no '::: hf_dtype.{name}' entry for hf_dtype.__all__'s {name}" for name in hf_dtype.__all__
            if name not in shown]
    for path, members in entries.items():
        target = resolve(path)
        name = path.rsplit(".", 1)[-1]
        if shadowed_by_a_module(path) and not inspect.ismodule(target):
            gaps.append(f"docs/api.md's '::: {path}' would show the module {path}, not {name}: write '::: {path}.{name}'")
            continue
        if not (target.__doc__ or "").strip():
            gaps.append(f"{path} has no docstring")
            continue
        for member in members or []:
            attribute = inspect.getattr_static(target, member)
            function = attribute.fget if isinstance(attribute, property) else getattr(attribute, "__func__", attribute)
            if not (getattr(function, "__doc__", None) or "").strip():
                gaps.append(f"{path}.{member} is listed on docs/api.md and has no docstring")
        if name in hf_dtype.__all__:
            gaps += [f"{path}: parameter {parameter!r} is not described in its docstring's Args"
                     for parameter in undescribed(target) - KNOWN_UNDESCRIBED.get(name, set())]
    return gaps


def undescribed(target: Any) -> set[str]:
    """Parameters of ``target``'s signature (a class: its ``__init__``) that its docstring does not describe."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # an exception class: no signature of its own
        return set()
    return {name for name in signature.parameters if name != "self"} - described_parameters(inspect.getdoc(target) or "")


def module_table() -> str:
    """The package's modules, each with the first line of its docstring, as a Markdown table."""
    rows = ["| module | its job |", "|---|---|"]
    for path in sorted((ROOT / "hf_dtype").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else "(no docstring)"
        rows.append(f"| `{path.name}` | {first.replace('|', '&#124;')} |")
    return "\n".join(rows)


def on_pre_build(config: Any) -> None:
    for gap in api_gaps():
        log.warning(gap)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MODULES_MARKER, module_table()) if MODULES_MARKER in markdown else markdown
