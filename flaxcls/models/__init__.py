"""Model families. Importing this package registers every model with ``flaxcls.registry``."""

from flaxcls.models import (  # noqa: F401  (each module registers its models)
    alexnet,
    darknet,
    densenet,
    googlenet,
    inception,
    mobilenet,
    resnet,
    shufflenet,
    squeezenet,
    vgg,
    xception,
)
