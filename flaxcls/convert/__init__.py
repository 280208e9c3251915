"""Importers of released weights into flaxcls variables (Paddle first). No TensorFlow here.

``from_paddle(path, model)`` reads a released tar (or folder, combined file, .pdparams) and
returns the variables; ``python -m flaxcls.convert paddle FILE --model M --out DIR`` writes them
as a checkpoint for ``--config.pretrained_model``.

Importing this package registers the Paddle name map of every family: each ``paddle_<family>``
module here is imported (found with ``pkgutil``, not listed), so a family's map is one new file.
The maps live here rather than beside the models so that ``import flaxcls`` never loads the
converter (it is imported on first use) and the dependency runs one way, converter -> models.
"""

import importlib
import pkgutil

from flaxcls.convert.importer import CONVERTER_VERSION, convert_to_checkpoint, from_paddle
from flaxcls.convert.paddle import paddle_name_map, paddle_to_flax
from flaxcls.convert.paddle_resnet import paddle_resnet_name_map, paddle_to_flax_resnet
from flaxcls.convert.readers import WeightFileError, load_paddle_arrays

for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("paddle_"):  # paddle.py is the converter; paddle_*.py the maps
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

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
