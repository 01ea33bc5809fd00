"""Typed dataclass configs: validation in ``__post_init__``, JSON round trip, ``key=value`` overrides.

Every component owns one dataclass deriving from :class:`Config`. Nested configs are plain dataclass
fields. ``from_dict`` rejects unknown keys (naming them), so a typo in a config file is an error and
never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from lfm_policy.errors import LfmPolicyError

C = TypeVar("C", bound="Config")


class ConfigError(LfmPolicyError, ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


def check(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass
class Config:
    """Base class of all configs. Subclasses are dataclasses and validate in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (tuples become lists, nested configs become dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "", prefix: str = "") -> C:
        """Build a config from a dict, recursing into nested configs.

        Args:
            data: Field values; missing fields take their defaults.
            where: Source named in error messages (e.g. the config file).
            prefix: Dotted path of this config inside its parent (``"head."``), for error messages.

        Raises:
            ConfigError: On unknown keys or invalid values; the message names file and field path.

        """
        lead = f"{where}: " if where else ""
        if not isinstance(data, dict):
            raise ConfigError(f"{lead}{prefix.rstrip('.') or cls.__name__}: expected a mapping, got "
                              f"{type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"{lead}{prefix}{unknown}: unknown key(s); valid keys are {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {name: _from_plain(hints[name], value, where, f"{prefix}{name}.") for name, value in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as e:
            if str(e).startswith(lead) and lead:
                raise
            raise ConfigError(f"{lead}{prefix}{e}") from None
        except TypeError as e:
            raise ConfigError(f"{lead}{prefix.rstrip('.') or cls.__name__}: {e}") from None

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialize to JSON; when ``path`` is given also write it atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike) -> C:
        """Load from a JSON file; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, where=str(path))

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self: C, overrides: list[str]) -> C:
        """Apply ``key=value`` overrides; nested keys use dots (``head.n_blocks=6``), values are JSON.

        A value that is not valid JSON is taken as a string (``interpolant=trig``).
        """
        data = self.to_dict()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key, raw = item.split("=", 1)
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            parts = key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"override {key!r}: {p!r} is not a nested config")
                node = node[p]
            if parts[-1] not in node:
                raise ConfigError(f"override {key!r}: unknown key {parts[-1]!r}; valid: {sorted(node)}")
            node[parts[-1]] = value
        return type(self).from_dict(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _from_plain(hint: Any, value: Any, where: str, prefix: str) -> Any:
    """Convert a JSON value to the annotated type (nested configs, tuples); leave the rest as is."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            if isinstance(a, type) and issubclass(a, Config) and isinstance(value, dict):
                return a.from_dict(value, where=where, prefix=prefix)
        if any(typing.get_origin(a) is tuple for a in args) and isinstance(value, list):
            return tuple(value)
        return value
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, where=where, prefix=prefix)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value
