"""`[contracts]`: which event contracts the agent publishes beyond the versions it emits.

    [contracts]
    dual_publish_until = { "workorder.completed.v1" = 2027-06-30T00:00:00Z }

`dual_publish_until` names retired major versions (`events.models.RETIRED_EVENT_MODELS`) to
publish beside their successor until a moment (a TOML date-time with its offset): while the
agent's clock is before it, every event of the successor also goes out as the retired version,
on the retired version's topic (`events.versions`: the down-conversion, and what it cannot
convert). Only a retired version with a down-conversion can be named (`DOWN_CONVERSIONS`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from config.fields import STRICT
from events.models import EVENT_TYPES_BY_NAME, RETIRED_EVENT_MODELS
from events.versions import DOWN_CONVERSIONS

__all__ = ["ContractsSection"]


class ContractsSection(BaseModel):
    model_config = STRICT

    dual_publish_until: dict[str, AwareDatetime] = {}

    @field_validator("dual_publish_until")
    @classmethod
    def _retired_with_down_conversion(cls, windows: dict[str, datetime]) -> dict[str, datetime]:
        """Each name is a retired version with a down-conversion; else a ValidationError on
        that name's own key (`check-config` names it and its line)."""
        convertible = ", ".join(sorted(DOWN_CONVERSIONS)) or "none"
        errors: list[InitErrorDetails] = []
        for name in windows:
            if name in DOWN_CONVERSIONS:
                continue
            if name in EVENT_TYPES_BY_NAME:
                why = "is a version this agent emits, not a retired one"
            elif name in RETIRED_EVENT_MODELS:
                why = "is retired, but has no down-conversion to publish it with"
            else:
                why = "is no event type (a versioned name: workorder.completed.v1)"
            message = (
                f"{name!r} {why}; retired versions that can be published beside their "
                f"successor: {convertible}"
            )
            errors.append(InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": message}),
                loc=(name,),
                input=name,
            ))
        if errors:
            raise ValidationError.from_exception_data("dual_publish_until", errors)
        return windows
