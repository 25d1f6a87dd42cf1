"""Errors a user can act on. The CLI prints their message without a traceback."""

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class MattransferError(Exception):
    """Base class: the message names the file, row or key at fault and what to do."""


class DataError(MattransferError):
    """Bad or missing input data."""


class ConfigError(MattransferError):
    """An invalid configuration file or option."""


class TrainingDiverged(MattransferError):
    """The loss became NaN or infinite: the run has no usable model."""


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


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's contents; an unreadable file, other text than UTF-8 or bad YAML is a `ConfigError`."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror}).") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at"
                          f" offset {exc.start}); save it as UTF-8.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from exc
