"""gridhub detectors."""
