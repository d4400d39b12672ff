"""Small I/O helpers: atomic writes and JSONL reading with line-numbered errors."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from amr.errors import InputError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only on success.

    A crash or exception leaves the old file (or nothing) in place, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output(
    out: str | Path, inputs: Iterable[str | Path | None], overwrite: bool | None = None, resumes: bool = False
) -> Path:
    """The one check of every command's output, before any work: refused when it is one of the
    command's inputs, lies inside an input folder (a run, a dataset, an audio folder) or contains an
    input, with or without ``--overwrite`` (symbolic links followed); and when it exists, unless
    ``overwrite`` (the command's ``--overwrite``; None: it has none) or ``resumes`` (the command
    continues what a killed run of it left there)."""
    out = Path(out)
    target = out.resolve()
    for src in (Path(s) for s in inputs if s is not None):
        given = src.resolve()
        if target == given:
            raise InputError("output would replace an input of this command; choose another output", out)
        if given.is_dir() and target.is_relative_to(given):
            raise InputError(f"output would lie inside the input {src}; choose an output outside it", out)
        if given.is_relative_to(target):
            raise InputError(f"output would contain the input {src}; choose an output outside it", out)
    if out.exists() and not resumes and not overwrite:
        hint = "pass --overwrite to replace it" if overwrite is False else "choose another output"
        raise InputError(f"output exists; {hint}", out)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def finite_number(v: Any) -> bool:
    """A JSON number that is finite (not a bool, not NaN, not infinite)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file; returns ``(line_number, object)`` pairs, skipping blank lines.

    Raises:
        InputError: naming the file and line of the first malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", path, i) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"malformed JSON ({e.msg})", path, i) from None
            if not isinstance(obj, dict):
                raise InputError("each line must be a JSON object", path, i)
            rows.append((i, obj))
    return rows


def file_name(value: str, what: str, path: str | Path | None = None, line: int | None = None) -> str:
    """An id that becomes part of a file name (a qid, a vid, a recipe entry's name, a pivot),
    checked once, here: refused with one line naming the file and line when it holds a path
    separator or NUL, is empty, ``.`` or ``..``, or is absolute, so that no name read from a file
    can reach outside the folder it is written to or read from."""
    if not value or value in (".", "..") or any(c in value for c in "/\\\0"):
        raise InputError(f"{what} {value!r} cannot name a file (a path separator, '..', or NUL)", path, line)
    return value


def at_least_one(value: int, name: str, least: int = 1, why: str = "") -> None:
    """A count option (``top_k``, ``--batch-size``, ``--workers``, ...) below ``least`` (1 unless
    said) is one line naming it, and why when the bound is not 1."""
    if value < least:
        raise InputError(f"must be at least {least}, got {value}{why}", name)
