"""The import rules of ARCHITECTURE.md hold for every module of ``amr`` (function-level and
type-checking imports included), and the size limits of a room's code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amr"


def _rules() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(module prefix -> room, room -> rooms it may import) from the table of ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Import rules") :]
    rooms: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        room, modules, may = cells
        for m in re.findall(r"`([\w.]+)`", modules):
            rooms[m] = room
        allowed[room] = {r.strip() for r in may.split(",") if r.strip()} | {room}
    return rooms, allowed


def _room_of(module: str, rooms: dict[str, str]) -> str | None:
    # the package row ("amr") covers amr/__init__.py only, not every module below it
    best = max((p for p in rooms if module == p or (p != "amr" and module.startswith(p + "."))), key=len, default=None)
    return rooms[best] if best else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _amr_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from amr import predict` imports the module amr.predict
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name == "amr" or name.startswith("amr.")]


def test_every_module_has_a_room_and_imports_only_what_its_room_may() -> None:
    rooms, allowed = _rules()
    assert {"ground", "model", "data", "augment", "checkpoints", "cli"} <= set(allowed)
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        room = _room_of(mod, rooms)
        assert room is not None, f"{mod} belongs to no room of ARCHITECTURE.md"
        for line, name in _amr_imports(path):
            target = _room_of(name, rooms) or _room_of(name.rsplit(".", 1)[0], rooms)
            if target is not None and target not in allowed[room]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {room} imports {name} ({target})")
    assert not broken, "\n".join(broken)


def test_the_rule_check_catches_an_upward_import(tmp_path) -> None:
    rooms, allowed = _rules()
    bad = tmp_path / "amr" / "model" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from amr.data.dataset import collate\n")
    [(line, name)] = _amr_imports(bad)
    assert line == 2 and _room_of(name, rooms) == "data" and "data" not in allowed["model"]


def test_no_function_over_60_lines_and_no_file_over_400() -> None:
    long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]):
        src = path.read_text()
        if len(src.splitlines()) > 400:
            long.append(f"{path.relative_to(ROOT)}: {len(src.splitlines())} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} has {n} lines")
    assert not long, "\n".join(long)


def test_torch_load_lives_in_checkpoints_only() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "torch.load(" in p.read_text())
    assert users == ["amr/checkpoints.py"]
