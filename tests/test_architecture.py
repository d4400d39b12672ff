"""The floor plan of ARCHITECTURE.md holds for every module of ``amr`` (function-level and
type-checking imports included): each room imports only rooms below it, the module graph has no
circle, no module takes another's private name, the run folder's names live in one file, and a
room's code keeps its size limits."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "amr"
RUN_FOLDER = PACKAGE / "results" / "run_folder.py"
# the run folder's names: whole constants (folder names) and parts of file names
FOLDER_NAMES = {"checkpoints", "predictions", "logs", ".hydra"}
FILE_NAMES = (
    "run.json",
    "test_metrics.json",
    "pretrain.json",
    "best.ckpt",
    "last.ckpt",
    "_preds.jsonl",
    "_metrics.json",
    "rescore.json",
    "ensemble.json",
    "metrics.csv",
    "config.yaml",
)


def _rules() -> tuple[list[str], dict[str, str], dict[str, set[str]]]:
    """(rooms bottom up, module prefix -> room, room -> rooms it may import) from ARCHITECTURE.md."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Import rules") :]
    order: list[str] = []
    rooms: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        room, modules, may = cells
        order.append(room)
        for m in re.findall(r"`([\w.]+)`", modules):
            rooms[m] = room
        allowed[room] = {r.strip() for r in may.split(",") if r.strip()} | {room}
    return order, rooms, allowed


def _room_of(module: str, rooms: dict[str, str]) -> str | None:
    # the package row ("amr") covers amr/__init__.py only, not every module below it
    best = max((p for p in rooms if module == p or (p != "amr" and module.startswith(p + "."))), key=len, default=None)
    return rooms[best] if best else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _amr_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module or module.name, the name taken) of every import of ``amr``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from amr.inference import predictor` imports the module amr.inference.predictor
            found += [(node.lineno, f"{node.module}.{a.name}", a.name) for a in node.names]
    return [(line, name, taken) for line, name, taken in found if name == "amr" or name.startswith("amr.")]


def _target(name: str, modules: dict[str, Path]) -> str:
    """The module an import reaches: ``amr.x.y`` when it is a module, else ``amr.x`` (a name of it)."""
    return name if name in modules else name.rsplit(".", 1)[0]


def test_every_module_has_a_room_and_imports_only_rooms_below_it() -> None:
    order, rooms, allowed = _rules()
    assert {"ground", "model", "data", "inference", "results", "training", "cli"} <= set(allowed)
    for room, may in allowed.items():  # the table itself: a room may import only rooms listed before it
        above = set(order[order.index(room) :]) - {room}
        assert not may & above, f"the table lets {room} import rooms above it: {sorted(may & above)}"
    broken = []
    for mod, path in _modules().items():
        room = _room_of(mod, rooms)
        assert room is not None, f"{mod} belongs to no room of ARCHITECTURE.md"
        for line, name, _ in _amr_imports(path):
            target = _room_of(name, rooms) or _room_of(name.rsplit(".", 1)[0], rooms)
            if target is not None and target not in allowed[room]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {room} imports {name} ({target})")
    assert not broken, "\n".join(broken)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        mod: {t for _, name, _ in _amr_imports(path) if (t := _target(name, modules)) != mod and t in modules}
        for mod, path in modules.items()
    }


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_module_graph_has_no_circle() -> None:
    circle = _circle(_graph())
    assert circle is None, " -> ".join(circle or [])


def test_the_circle_check_finds_one() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_a_private_name_of_another() -> None:
    taken = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in _modules().values()
        for line, name, name_taken in _amr_imports(path)
        if name_taken.startswith("_") and not name_taken.startswith("__")
    ]
    assert not taken, "\n".join(taken)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _run_folder_names(path: Path) -> list[str]:
    """The string constants of a file (docstrings aside) that spell a name of the run folder."""
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
            if text in FOLDER_NAMES or any(name in text for name in FILE_NAMES):
                found.append(f"{path.name}:{node.lineno}: {text!r}")
    return found


def test_the_run_folder_names_live_in_run_folder_only() -> None:
    found = [
        f"{path.parent.relative_to(ROOT)}/{hit}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != RUN_FOLDER
        for hit in _run_folder_names(path)
    ]
    assert not found, "spell the run folder through amr.results.run_folder:\n" + "\n".join(found)
    assert _run_folder_names(RUN_FOLDER)  # the check reads what it looks for


def test_the_rule_checks_catch_an_upward_import_and_a_private_name(tmp_path) -> None:
    _, rooms, allowed = _rules()
    bad = tmp_path / "amr" / "model" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from amr.data.dataset import _private\n    return f'{x}/test_metrics.json'\n")
    [(line, name, taken)] = _amr_imports(bad)
    assert line == 2 and _room_of(name, rooms) == "data" and "data" not in allowed["model"]
    assert taken == "_private"
    assert _run_folder_names(bad) == ["bad.py:3: '/test_metrics.json'"]


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
    assert users == ["amr/checkpoints/__init__.py"]
