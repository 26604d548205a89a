"""gridhub alerts."""
