"""darknet family (to be written)."""
