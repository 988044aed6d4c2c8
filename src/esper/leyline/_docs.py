"""Render the payload catalogue as Markdown (``docs/EVENTS.md``)."""

from __future__ import annotations

from esper.leyline._catalogue import CATALOGUE_SPECS
from esper.leyline._events import LIFECYCLE_EVENT_TYPES
from esper.leyline._schema import DISCRIMINATORS, FieldSpec


def _row(spec: FieldSpec, prefix: str = "") -> str:
    kind = spec.type.value + (" or null" if spec.nullable else "")
    req = "yes" if spec.required else "no"
    meaning = spec.meaning
    if spec.allowed:
        meaning += ": " + ", ".join(f"`{v}`" for v in spec.allowed)
    return f"| `{prefix}{spec.name}` | {kind} | {spec.unit} | {req} | {meaning} |"


def render_events_markdown() -> str:
    """The whole of ``docs/EVENTS.md``, generated from the catalogue."""
    out = [
        "# Telemetry events",
        "",
        "Generated from `esper.leyline` (the payload catalogue) by `esper docs`; do not edit.",
        "A test fails when this file differs from what the catalogue generates.",
        "",
        "Every event is a `TelemetryEvent` with `event_type`, `seed_id`, `slot_id`, `epoch`,",
        "`message`, `severity`, `timestamp`, `event_id`, `run_id` and the payload `data` below.",
        "Lifecycle events (never dropped by the hub): "
        + ", ".join(f"`{t.name}`" for t in sorted(LIFECYCLE_EVENT_TYPES, key=lambda t: t.name))
        + ".",
        "",
    ]
    for spec in CATALOGUE_SPECS:
        out += [f"## {spec.title}", "", spec.meaning, ""]
        if spec.event_type in DISCRIMINATORS:
            out += [
                f"Variant selected by `{DISCRIMINATORS[spec.event_type]}` = `{spec.variant}`.",
                "",
            ]
        out += ["| field | type | unit | required | meaning |", "|---|---|---|---|---|"]
        for field in spec.fields:
            out.append(_row(field))
            for item in field.item_fields:
                out.append(_row(item, prefix=f"{field.name}[*]."))
        out.append("")
    return "\n".join(out)
