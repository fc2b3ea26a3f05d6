"""The hub link: the MQTT v5 session (asyncio over paho, `mqtt_session`; built from the hub
settings by `hub_session`), the forwarder that acks in the buffer exactly what PUBACKs cover
(`forwarder`), the retained status (`status`), and the request/response commands with their
signed requests (`commands`, `signing`, rate-limited by `token_bucket`), and the replay of
retained events that the CLI and the remote command share (`replay`)."""
