"""`${NAME}` in a configured string (CONTRACT §6): the one resolver, shared by the notification file and the
cameras' `source` URLs.

A reference is read from the environment when the value is used, never when the file holding it is loaded, so
that files and logs show it as written. The hub's own settings (`GRIDHUB_…`, among them the secret key) are
never expanded: a channel URL or a camera URL written by whoever edits those files must not be able to carry them
away. Only `${NAME}` is a reference; a bare `$NAME` is left as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = ["PROTECTED_PREFIX", "EnvRefError", "expand", "protected_refs", "refs"]

PROTECTED_PREFIX = "GRIDHUB_"
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class EnvRefError(ValueError):
    """A reference that cannot be expanded: one of the hub's own settings, or a variable that is not set."""


def refs(value: str) -> list[str]:
    """The names `value` refers to, in order."""
    return _REF.findall(value)


def protected_refs(value: str) -> list[str]:
    """The names in `value` that are the hub's own settings and never expand."""
    return [n for n in refs(value) if n.upper().startswith(PROTECTED_PREFIX)]


def expand(value: str, *, where: str = "this value", error: type[ValueError] = EnvRefError,
           environ: Mapping[str, str] | None = None) -> str:
    """`${NAME}` replaced by the environment's NAME. One of the hub's own settings (`GRIDHUB_…`) or a missing
    variable is an `error` (EnvRefError unless the caller names its own) that names it; `where` says where the
    reference was written ("the notify file", "a camera source")."""
    env = os.environ if environ is None else environ

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.upper().startswith(PROTECTED_PREFIX):
            raise error(f"${{{name}}}: the hub's own settings cannot be used in {where}")
        if name not in env:
            raise error(f"${{{name}}} is not set in the environment")
        return env[name]

    return _REF.sub(one, value)
