"""The demo: a simulated filling line (an OPC UA server) and the agent reading it."""
