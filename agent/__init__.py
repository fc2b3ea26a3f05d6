"""plant-edge-agent runtime: wiring, pipeline, mapping, events, forwarder, MQTT session, CLI."""

__version__ = "0.1.0"
