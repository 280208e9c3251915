"""Model families. Importing this package registers every model with ``flaxcls.registry``."""

from flaxcls.models import resnet  # noqa: F401  (registers ResNet, ResNet_vc, ResNet_vd, tiny)
