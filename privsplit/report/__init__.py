"""Figures and reports built from saved results."""
