"""Paddle name map of the googlenet family (to be written)."""
