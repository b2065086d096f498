"""Adapters at the edge: storage and transport implementations of the ports.

Nothing in the core imports from here; ``framework.adapters.factory`` picks one
from settings. Each module imports its own driver, so importing the PostgreSQL
adapter is what pulls in psycopg, and nothing else does.
"""
