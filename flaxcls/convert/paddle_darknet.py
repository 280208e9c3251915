"""Paddle name map of the darknet family (to be written)."""
