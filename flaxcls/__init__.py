"""flaxcls: a JAX/Flax image-classification trainer and model zoo (PaddleCV 2019, re-created).

Importing the package registers the models; it never imports TensorFlow (only flaxcls.data does).
"""

from flaxcls import models  # noqa: F401  (registers the model families)
from flaxcls.registry import ModelCfg, create_model, get_model_cfg, list_models, register_model

__version__ = "0.1.0"

__all__ = [
    "ModelCfg",
    "__version__",
    "create_model",
    "get_model_cfg",
    "list_models",
    "register_model",
]


def __getattr__(name: str):
    # flaxcls.convert is imported on first use (flaxcls.convert.from_paddle after `import flaxcls`).
    if name == "convert":
        import importlib

        return importlib.import_module("flaxcls.convert")
    raise AttributeError(f"module 'flaxcls' has no attribute {name!r}")
