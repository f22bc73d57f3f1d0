"""Leakage probes: what the features leak (attribute, reconstruction) and what the returned scores leak.

The returned scores leak membership and allow inversion.
"""
