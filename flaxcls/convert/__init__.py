"""Importers of released weights into flaxcls variables (Paddle first). No TensorFlow here.

Importing this package registers the Paddle name map of every family.
"""

from flaxcls.convert import (  # noqa: F401  (each module registers its family's name map)
    paddle_alexnet,
    paddle_darknet,
    paddle_densenet,
    paddle_googlenet,
    paddle_inception,
    paddle_mobilenet,
    paddle_resnet,
    paddle_shufflenet,
    paddle_squeezenet,
    paddle_vgg,
    paddle_xception,
)
from flaxcls.convert.paddle import paddle_name_map, paddle_to_flax
from flaxcls.convert.paddle_resnet import paddle_resnet_name_map, paddle_to_flax_resnet

__all__ = ["paddle_name_map", "paddle_resnet_name_map", "paddle_to_flax", "paddle_to_flax_resnet"]
