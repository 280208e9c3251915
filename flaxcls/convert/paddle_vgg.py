"""Paddle name map of the vgg family (to be written)."""
