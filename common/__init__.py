"""Pieces shared by the ingest server, the processor and the reporting API."""
