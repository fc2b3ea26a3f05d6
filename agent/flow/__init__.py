"""The flow inside the agent: readings from the sources are mapped to canonical events
(`mapping`, with counter baselines kept across restarts in `mapping_state`) and committed to the
buffer in group commits (`pipeline`). Pure code and the buffer; no MQTT."""
