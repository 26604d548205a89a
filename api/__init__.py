"""gridhub api."""
