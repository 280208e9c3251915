"""Any released model of the 2019 PaddleCV table with its original training recipe.

    python launch.py --config=configs/paddle2019.py:ResNet101_vd --workdir=runs/r101vd \
        --config.data_dir=/data/ILSVRC2012

The name after the colon is any of the 51 released models that had a recipe (default
ResNet50); the 2019 release's top-1 / top-5 of each is in the README's model table. The
values (epochs, schedule, lr for the recipe's global batch, L2, mixup, label smoothing, crop
scale and aspect) are those of the model's original training script, listed with their
gaps in flaxcls/recipes.py; input size and eval resize come with the model. A
different --config.batch_size scales the lr linearly. The other recipes in configs/ are
the same numbers for one model each, with their notes.
"""

from flaxcls.config import default_config
from flaxcls.recipes import paddle2019_recipe
from flaxcls.registry import get_model_cfg


def get_config(model: str = "ResNet50"):
    c = default_config()
    c.model = get_model_cfg(model).name
    c.num_classes = 1000
    for field, value in paddle2019_recipe(model).items():
        setattr(c, field, value)
    c.test_batch_size = 256
    c.checkpoint_every_steps = 2000
    return c
