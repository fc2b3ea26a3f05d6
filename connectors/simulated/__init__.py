"""A simulated source: deterministic readings at a fixed rate, for demos, tests and benchmarks."""

from connectors.simulated.connector import SimulatedConnector

__all__ = ["SimulatedConnector"]
