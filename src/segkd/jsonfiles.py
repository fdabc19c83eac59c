"""The study's small JSON files (manifest, folds, metrics, run state): read with one clear error, and
written atomically, so that a reader never sees half a file and a killed writer leaves the old one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from segkd.errors import UserError


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """The JSON value in `path`; a missing or unreadable file is one UserError naming `what` it is
    (``folds file``) and how to `fix` it (``re-run `segkd split```)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found ({fix})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: corrupt {what} ({err}); {fix}") from None


def write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` through a temporary file beside it and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the study's files are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """`data` as JSON (sorted keys, one space indent, a final newline), replaced atomically."""
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
