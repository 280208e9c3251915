"""xception family (to be written)."""
