"""Paddle name map of the shufflenet family (to be written)."""
