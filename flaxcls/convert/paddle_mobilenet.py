"""Paddle name map of the mobilenet family (to be written)."""
