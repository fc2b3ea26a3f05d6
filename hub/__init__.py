"""The hub side: every plant's events landed exactly once in PostgreSQL, gaps healed by replay.

::

    agents ──MQTT v5──▶ broker ──$share/{group}/{prefix}/+/+/events/#──▶ hub process x N
                                                                            │
       hub.ingest: decode (events.formats, every wire format), batch ───────┤
       hub.store:  one transaction per batch: event_ids (unique id) → events│(partitioned by
                   receive time), seq_held and seq_lost per agent           │ day) → COMMIT
       hub.ingest: PUBACK each message of the batch, only now ◀─────────────┘
       hub.gaps:   complement of held + lost = gaps; one open too long ──▶ signed `replay`
                   {first_seq, last_seq} to {prefix}/{site}/{agent}/cmd/replay; the answer's
                   `gone` ranges ──▶ seq_lost (beyond the agent's retention)

       hub.status: every agent's retained status (ordinary subscription) ─▶ agent_status,
                   status_samples (backlog over time)
       hub.health ─▶ hub.web: dashboard `/`, `/agents/SITE/AGENT`, `/api/fleet`, `/metrics`

Modules: `hub.config` (`hub.toml`), `hub.store` (schema and landing), `hub.ingest` (the ack
rule), `hub.gaps` (gap healing), `hub.ranges` (seq range arithmetic), `hub.status` (agents'
statuses), `hub.health` (the one reading of synchronization health), `hub.web` (its pages and
metrics), `hub.run` (one process).

Dependencies: the event contract (`events`), the config loader (`config`), the shared MQTT
session and command signing (`agent.link.mqtt_session`, `agent.link.signing`) and the backoff
(`connectors.backoff`); never the agent's runtime. Only `agent.cli` (the `edge-agent hub`
command) and the tests import `hub`. The operator's guide is docs/hub-guide.md.
"""
