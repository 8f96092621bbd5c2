"""Helpers several core test modules share (imported as a sibling module, like ``test_api``'s fixtures)."""

from __future__ import annotations

import ast
import pathlib


def imported_modules(module) -> set[str]:
    """The top-level names a module's source imports (``import x.y`` and ``from x.y import z`` give ``x``;
    relative imports give the sibling's name): pure cores must import no I/O."""
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    return names | {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
