"""Paddle name map of the inception family (to be written)."""
