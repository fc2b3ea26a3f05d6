"""OPC UA source connector (asyncua)."""

from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.connector import OpcUaConnector

__all__ = ["OpcUaConnector", "OpcUaSettings", "OpcUaSignalSettings"]
