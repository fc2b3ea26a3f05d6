"""`[agent]`: who the agent is (site, id: its topic levels), where its state lives, how it
logs and how long a stop may take. The runtime (`agent.runtime`) and the service read it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from config.fields import STRICT, TopicLevel

__all__ = ["AgentSection"]


class AgentSection(BaseModel):
    model_config = STRICT

    site: TopicLevel
    id: TopicLevel
    state_dir: Path = Path("./state")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["keyvalue", "json"] = "keyvalue"
    shutdown_grace_s: Annotated[float, Field(gt=0, le=300)] = 10.0
