"""Leakage probes: what the features leak (attribute, reconstruction) and what the returned scores leak (membership, inversion)."""
