"""The event contract: what an agent publishes and a hub consumes, in one leaf package.

Envelope (CloudEvents 1.0 attributes plus extensions), one msgpack map per event:

    specversion "1.0" | id | source "/{site}/{agent}/{source name}" | type "<name>.v<N>"
    time (RFC 3339, source timestamp) | subject (asset path) | site | agent | quality
    seq (per agent, +1 per accepted event) | data (the type's fields, a map)
    optional context extensions: assetpath (ISA-95) | workorder | product | unmapped
    optional: backfilled ("true": read from the source's history after a gap)

Modules, one job each:
- `events.kinds`: the vocabulary: event kinds (unversioned names, as written in config),
  machine states, delivery classes (priorities), the agent's own event kinds.
- `events.models`: the versioned data models and their registry (`EVENT_TYPES`), the
  CloudEvents envelope model, the published JSON Schemas (`json_schemas`, with `$id`s,
  units, versions), the agent's own event models, and `Event` (a canonical event before the
  buffer accepted it).
- `events.compat`: the compatibility policy as code: `compare` published schemas with this
  agent's (`edge-agent schema check`, the contract test), `read_published` for a folder.
- `events.examples`: one realistic example event per type (the schemas' `examples`).
- `events.catalog`: the schemas as the Markdown catalog in docs/hub-contract.md.
- `events.ids`: deterministic ids (`event_id`, `record_id`) and the RFC 3339 time text.
- `events.wire`: the wire format: `CONTENT_TYPE`, the stored-body encoding, the identity splice,
  batch encode/decode and `validate_envelope`.

Dependency rule: like `buffer`, this package imports nothing of ours (only the standard
library, pydantic and msgpack), so the agent, its config and the hub side can all import it;
tests/unit/test_architecture.py enforces it.
"""
