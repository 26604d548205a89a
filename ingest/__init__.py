"""gridhub ingest."""
