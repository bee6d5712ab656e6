"""``make lint``: no module of src/aioflow over 600 lines, no class over 300.

A size is a smell, not a proof, so the limits are generous (STYLE.md: httpcore's
largest module is 592 lines). A module or class that has a reason to be bigger is
listed in ALLOWED with the reason; the README's Architecture section names it too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MODULE_LINES = 600
CLASS_LINES = 300
# "path" or "path:Class" -> why it may be bigger
ALLOWED: dict[str, str] = {
    "src/aioflow/client/client.py:Client": "the client's public surface, one short method per "
    "documented operation; split, it would split the API users read",
}


def problems(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent.parent).as_posix()
        text = path.read_text()
        lines = text.count("\n")
        if lines > MODULE_LINES and rel not in ALLOWED:
            out.append(f"{rel}: {lines} lines (limit {MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > CLASS_LINES and f"{rel}:{node.name}" not in ALLOWED:
                    out.append(f"{rel}:{node.lineno}: class {node.name} is {size} lines")
    return out


def main() -> int:
    found = problems(Path(__file__).resolve().parent.parent / "src" / "aioflow")
    for p in found:
        print(p, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
