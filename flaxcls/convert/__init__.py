"""Importers of released weights into flaxcls variables (Paddle first). No TensorFlow here.

``from_paddle(path, model)`` reads a released tar (or folder, combined file, .pdparams) and
returns the variables; ``python -m flaxcls.convert paddle FILE --model M --out DIR`` writes them
as a checkpoint for ``--config.pretrained_model``.

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
from flaxcls.convert.importer import CONVERTER_VERSION, convert_to_checkpoint, from_paddle
from flaxcls.convert.paddle import paddle_name_map, paddle_to_flax
from flaxcls.convert.paddle_resnet import paddle_resnet_name_map, paddle_to_flax_resnet
from flaxcls.convert.readers import WeightFileError, load_paddle_arrays

__all__ = [
    "CONVERTER_VERSION",
    "WeightFileError",
    "convert_to_checkpoint",
    "from_paddle",
    "load_paddle_arrays",
    "paddle_name_map",
    "paddle_resnet_name_map",
    "paddle_to_flax",
    "paddle_to_flax_resnet",
]
