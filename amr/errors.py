"""One exception type for bad user input, printed as a single line by the CLIs."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input: the message names the file, the line or id, and what is wrong."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


def os_error_line(e: OSError) -> str:
    """An operating-system error (read-only folder, full disk, ...) as one line naming the file."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or type(e).__name__}"


def os_error_behind(e: BaseException | None) -> OSError | None:
    """The operating-system error an exception is, or that a RuntimeError was raised while handling:
    torch's zip writer turns a full disk during ``torch.save`` into a RuntimeError whose context is
    the OSError. Other errors raised while handling one are bugs of their own, and not unwrapped."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        if not isinstance(e, RuntimeError):
            return None
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class MissingExtra(ImportError):
    """An optional extra is not installed; the message names the ``pip install`` that adds it."""
