"""Helpers shared by the integration tests: PostgreSQL servers, HTTP servers, a cuttable TCP proxy."""
