"""vgg family (to be written)."""
