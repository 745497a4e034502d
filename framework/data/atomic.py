"""Writing output files atomically: a temporary file in the target folder, renamed into place when complete.

A reader (or a crashed run) never sees a half-written ``train.txt`` or ``keywords.txt``: either the old file
or the complete new one is there.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["AtomicTextFile", "atomic_text_file", "current_umask"]


def current_umask() -> int:
    """The process's umask (read by setting it and back: there is no getter). For widening what ``mkstemp`` and
    ``mkdtemp`` create (0600, 0700) to what a plain ``open``/``mkdir`` would, before a rename into place."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_umask = current_umask


class AtomicTextFile:
    """A UTF-8 text file written as ``.<name>.*.tmp`` next to ``path``; :meth:`commit` renames it to ``path``,
    :meth:`discard` removes it. Permissions follow the umask like a plain ``open`` (``mkstemp`` alone would
    leave the file readable by its owner only)."""

    def __init__(self, path: str | Path, buffering: int = 1 << 20) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        os.fchmod(fd, 0o666 & ~_umask())
        self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=buffering)

    def commit(self) -> Path:
        """Flush, close and rename into place; returns the final path."""
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file (the target is left untouched)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_text_file(path: str | Path) -> Iterator[IO[str]]:
    """``with atomic_text_file(p) as f: f.write(...)``: ``p`` appears complete on success, untouched on error."""
    target = AtomicTextFile(path)
    try:
        yield target.file
    except BaseException:
        target.discard()
        raise
    target.commit()
