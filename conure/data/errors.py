"""The one exception type of the data layer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class DataError(ValueError):
    """Malformed or unusable input data.

    The message starts with ``path:line:`` when the problem can be located in a file, so that editors and
    terminals can jump to it; :attr:`path` and :attr:`line` carry the same information for programs.
    """

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None, line: Optional[int] = None) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        self.reason = message
        super().__init__(where + message)
