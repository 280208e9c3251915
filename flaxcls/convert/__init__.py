"""Importers of released weights into flaxcls variables (Paddle first). No TensorFlow here."""

from flaxcls.convert.paddle_resnet import paddle_resnet_name_map, paddle_to_flax_resnet

__all__ = ["paddle_resnet_name_map", "paddle_to_flax_resnet"]
