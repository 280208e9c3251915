"""Paddle name map of the xception family (to be written)."""
