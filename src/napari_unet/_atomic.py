"""Atomic file writes: a crash or a full disk never leaves a half-written file.

Data go to a new hidden file beside the destination, are flushed to disk, and
the file is renamed over the destination in one step. The temporary file gets
the permissions of any new file (0666 less the umask), unlike
:func:`tempfile.mkstemp`'s owner-only 0600.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_destination(path: str | os.PathLike[str], example_name: str) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it over ``path`` if the block succeeds.

    Parameters
    ----------
    path : str or path-like
        Final destination; an existing file is replaced only once the new one is
        complete.
    example_name : str
        File name proposed in the error message when ``path`` is a folder.

    Raises
    ------
    IsADirectoryError
        If ``path`` is a folder.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; give a file name such as {path / example_name}."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder {path.parent} does not exist; create it first.")
    temporary = _create_temporary(path)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> Path:
    """Create a new empty hidden file beside ``path`` and return its name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(name, flags, 0o666))
            return name
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a temporary file beside {path}.")
