"""`[sparkplug]`: the agent as a Sparkplug B 3.0 edge node (`agent.link.sparkplug`).

Off by default. With `enabled = true` the events go to the `[hub]` broker as Sparkplug B
(NBIRTH/NDEATH, DBIRTH/DDATA per asset) instead of in the `[hub] format`: the buffer has one
consumer, so an agent speaks one of the two to its hub (docs/sparkplug.md).

The three ids are Sparkplug topic levels (`spBv1.0/{group_id}/DDATA/{edge_node_id}/...`,
`spBv1.0/STATE/{primary_host_id}`): the spec allows any UTF-8 but `/`, `+` and `#`; this
section takes the same safe names as `[agent] site` and `id`, which the two defaults are.
"""

from __future__ import annotations

from pydantic import BaseModel

from config.fields import STRICT, TopicLevel

__all__ = ["SparkplugSection"]


class SparkplugSection(BaseModel):
    """`[sparkplug]`; see the module docstring."""

    model_config = STRICT

    enabled: bool = False
    # The Sparkplug Group ID; default: `[agent] site`.
    group_id: TopicLevel | None = None
    # The Sparkplug Edge Node ID; default: `[agent] id`.
    edge_node_id: TopicLevel | None = None
    # The Primary Host Application's id: while its STATE says offline, nothing is published
    # (events stay in the buffer) and on its return the node births again. None: do not wait.
    primary_host_id: TopicLevel | None = None
