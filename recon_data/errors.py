"""User-facing errors.

A `ReconError` carries one line that says what went wrong, where, and how to fix it. The CLI prints it
without a traceback and exits with `exit_code`. Raise it for anything a user can cause (bad input, bad
config, missing files); let genuine bugs surface as ordinary exceptions.
"""

from __future__ import annotations


class ReconError(Exception):
    """An error the user can fix; `str(err)` is the single line shown to them."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(ReconError):
    """A pipeline file or option is invalid (exit code 2, like a usage error)."""

    exit_code = 2


def require_module(module: str, extra: str) -> None:
    """Fail early, naming the exact install command, when an optional dependency is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ReconError(
            f"this feature needs the optional package '{module}': install it with "
            f"`.venv/bin/pip install -e '.[{extra}]'`"
        )
