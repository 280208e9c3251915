"""Paddle name map of the densenet family (to be written)."""
