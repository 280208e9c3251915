"""Paddle name map of the squeezenet family (to be written)."""
