"""The one YAML reader: safe loading only (nothing in a file can import or execute code), every failure a
GuidanceError that names the file; and a file test that never raises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import GuidanceError, shorten


def is_file(path: str | Path) -> bool:
    """Whether `path` is a file; False also for a name the system cannot look up (too long for a path, say)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def read_yaml(path: str | Path, what: str, example: str) -> Any:
    """The data of the YAML file at `path`; `what` names the file's role and `example` shows what to pass, for the
    message when there is no such file."""
    path = Path(path)
    if not is_file(path):
        raise GuidanceError(f"No {what} at {shorten(str(path), 300)}. {example}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise GuidanceError(f"{path}: not valid YAML: {' '.join(str(error).split())}. Fix the syntax at the "
                            "line it names.") from None
    except UnicodeDecodeError:
        raise GuidanceError(f"{path}: not a text file; a {what} is YAML.") from None
    except OSError as error:
        raise GuidanceError(f"Cannot read '{path}' ({error.strerror}). Pass the path of a readable {what}.") from None
