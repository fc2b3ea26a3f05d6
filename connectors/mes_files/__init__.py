"""A folder of MES batch files (CSV or JSON): each complete file's rows become records."""

from connectors.mes_files.connector import MesFilesConnector

__all__ = ["MesFilesConnector"]
