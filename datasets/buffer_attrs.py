"""The write-through attrs dict of a replay buffer, and the JSON check every stored attr goes through."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from lfm_policy.errors import DataError


def check_json(value: dict[str, Any], where: str) -> dict[str, Any]:
    """Return a JSON round-tripped copy of ``value``; raise DataError naming ``where`` if it is not JSON."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: values must be JSON-serializable ({e})") from e


class WriteThroughAttrs(dict):
    """A dict whose changes are written through ``save`` (JSON values only).

    ``save(attrs) -> stored attrs`` raises when a change cannot be stored (not JSON-serializable,
    read-only buffer); the change is then rolled back.
    """

    def __init__(self, save: Callable[[dict[str, Any]], dict[str, Any]], initial: Mapping[str, Any]):
        super().__init__(initial)
        self._save = save

    def _mutate(self, op: str, *args: Any, **kwargs: Any) -> Any:
        before = dict(self)
        result = getattr(super(), op)(*args, **kwargs)
        try:
            clean = self._save(dict(self))
        except Exception:
            super().clear()
            super().update(before)
            raise
        super().clear()
        super().update(clean)
        return result

    def __setitem__(self, key: str, value: Any) -> None:
        self._mutate("__setitem__", key, value)

    def __delitem__(self, key: str) -> None:
        self._mutate("__delitem__", key)

    def update(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102 (dict.update)
        self._mutate("update", *args, **kwargs)

    def pop(self, *args: Any) -> Any:  # noqa: D102 (dict.pop)
        return self._mutate("pop", *args)

    def setdefault(self, key: str, default: Any = None) -> Any:  # noqa: D102 (dict.setdefault)
        self._mutate("setdefault", key, default)
        return self[key]

    def clear(self) -> None:  # noqa: D102 (dict.clear)
        self._mutate("clear")
