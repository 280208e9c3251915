"""shufflenet family (to be written)."""
