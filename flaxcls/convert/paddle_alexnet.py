"""Paddle name map of the alexnet family (to be written)."""
