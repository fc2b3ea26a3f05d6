"""What every section of the config shares: the strict model config and the name types.

Every model of the config sets `model_config = STRICT`: unknown keys are errors (a typo is an
error that `edge-agent check-config` names, never a setting silently ignored) and a loaded
config is frozen (never changed in place: a reload builds a new one). `TopicLevel` and
`AssetPath` are the names that end up in MQTT topics and CloudEvents attributes, so they are
checked where they are written.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

__all__ = ["STRICT", "AssetPath", "TopicLevel"]

STRICT = ConfigDict(extra="forbid", frozen=True)


# A name that is safe as one MQTT topic level and in a CloudEvents source.
TopicLevel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
AssetPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]
