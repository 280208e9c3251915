"""Model families. Importing this package registers every model with ``flaxcls.registry``.

Every module of the package is imported (found with ``pkgutil``, not listed), so a new family
is one new file here: its ``register_model`` lines run on ``import flaxcls``.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
