"""gridhub simulators."""
