"""The names options and settings models are declared with, in two modes.

Every options model of the agent and of its plugins (sensors, actuators,
links, filters, the core settings) is declared with the names this module
hands out: ``BaseModel``, ``Field``, ``SecretStr``, ``field_validator`` and
the rest, spelled as pydantic spells them.

- **validating** (the default): the names *are* pydantic's. ``check``,
  ``plugins``, the tests and a child process that validates a config for
  ``run`` use this mode; every message stays pydantic's, as ``check`` words it.
- **plain**: pydantic is never imported. The names are small stand-ins, and a
  model class is an ordinary class whose instances are rebuilt, unvalidated,
  from data a validating process has already checked
  (:mod:`agent.config_cache`). ``edge-agent run`` started as its own process
  uses this mode: pydantic with pydantic-settings is about 12 MiB of the
  process and half of its start-up CPU.

The mode is chosen once, before the first model is declared
(:func:`use_plain`); it cannot change after a name was handed out, so a class
is never half one thing and half the other. A plugin that imports pydantic
itself still works in both modes; it only brings pydantic into ``run``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # what the type checker sees: always pydantic's own names
    from pydantic import AfterValidator as AfterValidator
    from pydantic import BaseModel as BaseModel
    from pydantic import BeforeValidator as BeforeValidator
    from pydantic import ConfigDict as ConfigDict
    from pydantic import Field as Field
    from pydantic import SecretStr as SecretStr
    from pydantic import TypeAdapter as TypeAdapter
    from pydantic import ValidationError as ValidationError
    from pydantic import create_model as create_model
    from pydantic import field_validator as field_validator
    from pydantic import model_validator as model_validator
    from pydantic_settings import BaseSettings as BaseSettings
    from pydantic_settings import PydanticBaseSettingsSource as PydanticBaseSettingsSource
    from pydantic_settings import SettingsConfigDict as SettingsConfigDict
    from pydantic_settings import SettingsError as SettingsError

#: where each name comes from in the validating mode
_PYDANTIC_NAMES = {
    "AfterValidator": "pydantic",
    "BaseModel": "pydantic",
    "BeforeValidator": "pydantic",
    "ConfigDict": "pydantic",
    "Field": "pydantic",
    "SecretStr": "pydantic",
    "TypeAdapter": "pydantic",
    "ValidationError": "pydantic",
    "create_model": "pydantic",
    "field_validator": "pydantic",
    "model_validator": "pydantic",
    "BaseSettings": "pydantic_settings",
    "PydanticBaseSettingsSource": "pydantic_settings",
    "SettingsConfigDict": "pydantic_settings",
    "SettingsError": "pydantic_settings",
}

_plain = False
_handed_out = False


class ModeError(RuntimeError):
    """The mode was asked to change after models were declared, or a
    validating-only name was used in a plain process."""


def use_plain() -> None:
    """Make this process run on plain, already-validated models (no pydantic).

    Must come before any model is declared; raises :class:`ModeError`
    otherwise (a validating process stays one)."""
    global _plain
    if _plain:
        return
    if _handed_out:
        raise ModeError("models are already declared with pydantic in this process")
    _plain = True


def is_plain() -> bool:
    """Whether models in this process are plain (run on validated data)."""
    return _plain


def can_use_plain() -> bool:
    """Whether :func:`use_plain` would still succeed in this process."""
    return _plain or not _handed_out


def __getattr__(name: str) -> Any:
    global _handed_out
    origin = _PYDANTIC_NAMES.get(name)
    if origin is None:
        raise AttributeError(f"module 'agent.model' has no attribute {name!r}")
    _handed_out = True
    if _plain:
        value = _STAND_INS[name]
    else:
        module = __import__(origin, fromlist=[name])
        value = getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


# --------------------------------------------------------------------------
# The plain mode's stand-ins


class _Missing:
    def __repr__(self) -> str:
        return "<required>"


MISSING: Any = _Missing()


class PlainField:
    """What ``Field(...)`` gives in a plain process: the default, nothing else
    (the constraints were checked by the validating process)."""

    __slots__ = ("default", "default_factory")

    def __init__(self, default: Any = MISSING, *, default_factory: Callable[[], Any] | None = None, **_: Any) -> None:
        self.default = default
        self.default_factory = default_factory

    def value(self) -> Any:
        """The default an instance built without this field gets."""
        if self.default_factory is not None:
            return self.default_factory()
        return copy.copy(self.default)


def _plain_field(default: Any = MISSING, **kwargs: Any) -> Any:
    return PlainField(default, **kwargs)


class PlainSecret:
    """A secret string that never shows in a repr, a str or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself (for the one place that sends it)."""
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')" if self._value else "SecretStr('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlainSecret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __len__(self) -> int:
        return len(self._value)


def _is_declared_field(name: str, annotation: Any) -> bool:
    if name.startswith("_") or name in ("model_config", "model_fields"):
        return False
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return not text.startswith(("ClassVar", "typing.ClassVar", "Final"))


class PlainModel:
    """A model in a plain process: its fields, defaults, methods and
    properties as declared, built from validated data without checking it."""

    __slots__ = ("__dict__", "_plain_extra")  # the fields live in __dict__, the extra keys apart

    model_config: ClassVar[dict[str, Any]] = {}
    model_fields: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__()
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            for name, annotation in vars(klass).get("__annotations__", {}).items():
                if _is_declared_field(name, annotation):
                    fields[name] = vars(klass).get(name, fields.get(name, MISSING))
        cls.model_fields = fields
        config: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            config.update(vars(klass).get("model_config", None) or {})
        config.update(kwargs)
        cls.model_config = config

    def __init__(self, **values: Any) -> None:
        """Fields from ``values``, the rest from their declared defaults."""
        data: dict[str, Any] = {}
        for name, default in type(self).model_fields.items():
            if name in values:
                data[name] = values.pop(name)
            elif isinstance(default, PlainField):
                if default.default is MISSING and default.default_factory is None:
                    raise TypeError(f"{type(self).__name__}: {name} is required")
                data[name] = default.value()
            elif default is MISSING:
                raise TypeError(f"{type(self).__name__}: {name} is required")
            else:
                data[name] = copy.copy(default)
        if values and type(self).model_config.get("extra") != "allow":
            raise TypeError(f"{type(self).__name__}: unknown fields {', '.join(sorted(values))}")
        object.__setattr__(self, "__dict__", data)
        object.__setattr__(self, "_plain_extra", dict(values))

    @classmethod
    def from_validated(cls, fields: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
        """An instance holding exactly ``fields`` (and ``extra``), as a
        validating process produced them."""
        obj = cls.__new__(cls)
        object.__setattr__(obj, "__dict__", dict(fields))
        object.__setattr__(obj, "_plain_extra", dict(extra or {}))
        return obj

    @property
    def model_extra(self) -> dict[str, Any] | None:
        """Keys beyond the declared fields (models that allow them)."""
        extra: dict[str, Any] = object.__getattribute__(self, "_plain_extra")
        return extra if type(self).model_config.get("extra") == "allow" else None

    def __copy__(self) -> Any:
        return type(self).from_validated(vars(self), object.__getattribute__(self, "_plain_extra"))

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        extra = object.__getattribute__(self, "_plain_extra")
        return type(self).from_validated(copy.deepcopy(vars(self), memo), copy.deepcopy(extra, memo))

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with some fields replaced (not checked: the caller's values are)."""
        clone = copy.deepcopy(self) if deep else copy.copy(self)
        object.__setattr__(clone, "__dict__", {**vars(clone), **(update or {})})
        return clone

    def model_dump(self, **_: Any) -> dict[str, Any]:
        """The fields (and extra keys) as plain dicts, nested models included."""

        def dump(value: Any) -> Any:
            if isinstance(value, PlainModel):
                return value.model_dump()
            if isinstance(value, list | tuple):
                return type(value)(dump(v) for v in value)
            if isinstance(value, dict):
                return {k: dump(v) for k, v in value.items()}
            return value

        out = {k: dump(v) for k, v in vars(self).items()}
        out.update({k: dump(v) for k, v in (self.model_extra or {}).items()})
        return out

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        yield from vars(self).items()

    def __setattr__(self, name: str, value: Any) -> None:
        if type(self).model_config.get("frozen"):
            raise TypeError(f"{type(self).__name__} is frozen")
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return vars(self) == vars(other) and self.model_extra == other.model_extra

    def __hash__(self) -> int:
        if not type(self).model_config.get("frozen"):
            raise TypeError(f"unhashable type: {type(self).__name__!r}")
        return hash((type(self), tuple(_hashable(v) for v in vars(self).values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _config_dict(**kwargs: Any) -> dict[str, Any]:
    return dict(kwargs)


def _validator_decorator(*_: Any, **__: Any) -> Callable[[Any], Any]:
    """``field_validator``/``model_validator`` in a plain process: the
    validating process ran the check; here the method is only kept."""

    def keep(fn: Any) -> Any:
        return fn

    return keep


class _Annotation:
    """``AfterValidator(fn)``/``BeforeValidator(fn)`` as annotation metadata."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func


class _PlainValidationError(ValueError):
    """Never raised in a plain process (nothing is validated there); exists
    so that ``except ValidationError`` still reads."""


class _PlainSettingsError(ValueError):
    """As :class:`_PlainValidationError`, for pydantic-settings."""


def _validating_only(name: str) -> Any:
    def refuse(*_: Any, **__: Any) -> Any:
        raise ModeError(f"{name} validates, and this process runs on validated data (agent.model is plain)")

    refuse.__name__ = name
    return refuse


class _ValidatingOnlyClass:
    """A validating-only base class in a plain process: subclassing it is
    allowed (a module may define one), using it is refused."""

    def __init__(self, *_: Any, **__: Any) -> None:
        raise ModeError(f"{type(self).__name__} validates, and this process runs on validated data")


_STAND_INS: dict[str, Any] = {
    "AfterValidator": _Annotation,
    "BaseModel": PlainModel,
    "BeforeValidator": _Annotation,
    "ConfigDict": _config_dict,
    "Field": _plain_field,
    "SecretStr": PlainSecret,
    "TypeAdapter": _validating_only("TypeAdapter"),
    "ValidationError": _PlainValidationError,
    "create_model": _validating_only("create_model"),
    "field_validator": _validator_decorator,
    "model_validator": _validator_decorator,
    "BaseSettings": PlainModel,
    "PydanticBaseSettingsSource": _ValidatingOnlyClass,
    "SettingsConfigDict": _config_dict,
    "SettingsError": _PlainSettingsError,
}

assert set(_STAND_INS) == set(_PYDANTIC_NAMES)
