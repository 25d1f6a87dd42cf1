"""Errors a user can act on. The CLI prints their message without a traceback."""

from pathlib import Path

from pydantic import ValidationError


class MattransferError(Exception):
    """Base class: the message names the file, row or key at fault and what to do."""


class DataError(MattransferError):
    """Bad or missing input data."""


class ConfigError(MattransferError):
    """An invalid configuration file or option."""


class LeakError(MattransferError):
    """A test-set sample was about to enter training or validation."""


def format_validation_error(exc: ValidationError, source: Path | str) -> str:
    """One line per problem: the dotted key, what was wrong and what was expected."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  key {key!r}: unknown key")
        else:
            lines.append(f"  key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)
