"""The schema language of the payload catalogue: field types, a field's spec (name, type, unit,
meaning, nullable, closed set, the fields of its records), a payload's spec, and the checks
they make. ``_catalogue`` declares every payload in it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from esper.leyline._errors import PayloadError
from esper.leyline._events import TelemetryEventType

ET = TelemetryEventType

DISCRIMINATORS: dict[TelemetryEventType, str] = {
    ET.EPOCH_COMPLETED: "scope",
    ET.ANALYTICS_SNAPSHOT: "kind",
}
"""The payload field that selects the variant, for event types that have variants."""


class FieldType(StrEnum):
    """The JSON-level type of a payload field."""

    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STR = "str"
    LIST = "list"
    DICT = "dict"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One payload field: its name, type, unit and meaning."""

    name: str
    type: FieldType
    unit: str
    meaning: str
    required: bool = True
    nullable: bool = False
    item_fields: tuple[FieldSpec, ...] = ()
    """For a DICT field whose values are records (``slot_id -> {...}``): the record's fields."""
    allowed: tuple[str, ...] = ()
    """For a STR field with a closed set of values: the values it may take (empty: any)."""

    def check(self, value: Any, where: str) -> None:
        """Raise PayloadError naming ``where`` when ``value`` does not fit this field."""
        if value is None:
            if not self.nullable:
                raise PayloadError(f"{where}: field '{self.name}' must not be null")
            return
        if not _TYPE_CHECKS[self.type](value):
            raise PayloadError(
                f"{where}: field '{self.name}' expects {self.type.value}, "
                f"got {type(value).__name__} {value!r:.60}"
            )
        if self.allowed and value not in self.allowed:
            raise PayloadError(
                f"{where}: field '{self.name}' is {value!r}, not one of {', '.join(self.allowed)}"
            )
        if self.item_fields:
            for key, record in value.items():
                _check_record(record, self.item_fields, f"{where}.{self.name}[{key!r}]")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: Any) -> bool:
    # Non-finite floats are legal: a NaN loss is exactly what telemetry must report.
    return (isinstance(v, float | int) and not isinstance(v, bool)) or (
        type(v).__module__ == "numpy" and hasattr(v, "dtype") and v.dtype.kind in "fiu"
    )


_TYPE_CHECKS: dict[FieldType, Callable[[Any], bool]] = {
    FieldType.FLOAT: _is_float,
    FieldType.INT: _is_int,
    FieldType.BOOL: lambda v: isinstance(v, bool),
    FieldType.STR: lambda v: isinstance(v, str),
    FieldType.LIST: lambda v: isinstance(v, list | tuple),
    FieldType.DICT: lambda v: isinstance(v, Mapping),
}


def _check_record(record: Any, fields: tuple[FieldSpec, ...], where: str) -> None:
    if not isinstance(record, Mapping):
        raise PayloadError(f"{where}: expects a record, got {type(record).__name__}")
    names = {f.name for f in fields}
    for spec in fields:
        if spec.name in record:
            spec.check(record[spec.name], where)
        elif spec.required:
            raise PayloadError(f"{where}: missing required field '{spec.name}'")
    unknown = sorted(set(record) - names)
    if unknown:
        raise PayloadError(f"{where}: unknown field(s) {unknown} (not in the payload catalogue)")


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """The payload of one event type, or of one variant of it."""

    event_type: TelemetryEventType
    variant: str | None
    meaning: str
    fields: tuple[FieldSpec, ...]

    @property
    def key(self) -> tuple[TelemetryEventType, str | None]:
        return (self.event_type, self.variant)

    @property
    def title(self) -> str:
        if self.variant is None:
            return self.event_type.name
        return f"{self.event_type.name} ({DISCRIMINATORS[self.event_type]}={self.variant})"

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.title} has no field '{name}'")

    def validate(self, data: Mapping[str, Any]) -> None:
        """Raise PayloadError when ``data`` misses a required field, has an unknown one, or
        has a value of the wrong type."""
        _check_record(data, self.fields, self.title)

    def check_present(self, data: Mapping[str, Any]) -> None:
        """Raise PayloadError when a field ``data`` holds has the wrong type. What a reader of
        a recording needs: fields an older version did not write, or a newer one added, and
        values outside a closed set are left to the reader's defaults, never trusted blindly
        as another type."""
        _check_types(data, self.fields, self.title)


def _check_types(record: Any, fields: tuple[FieldSpec, ...], where: str) -> None:
    if not isinstance(record, Mapping):
        raise PayloadError(f"{where}: expects a record, got {type(record).__name__}")
    for spec in fields:
        value = record.get(spec.name)
        if value is None:
            continue
        if not _TYPE_CHECKS[spec.type](value):
            raise PayloadError(
                f"{where}: field '{spec.name}' expects {spec.type.value}, "
                f"got {type(value).__name__} {value!r:.60}"
            )
        for key, item in value.items() if spec.item_fields else ():
            _check_types(item, spec.item_fields, f"{where}.{spec.name}[{key!r}]")


def _f(
    name: str,
    type_: FieldType,
    unit: str,
    meaning: str,
    *,
    required: bool = True,
    nullable: bool = False,
    item_fields: tuple[FieldSpec, ...] = (),
    allowed: tuple[str, ...] = (),
) -> FieldSpec:
    return FieldSpec(name, type_, unit, meaning, required, nullable, item_fields, allowed)


FLT, INT, BOOL, STR, LIST, DICT = (
    FieldType.FLOAT,
    FieldType.INT,
    FieldType.BOOL,
    FieldType.STR,
    FieldType.LIST,
    FieldType.DICT,
)
