"""Any released model of the 2019 PaddleCV table with its original training recipe.

    python launch.py --config=configs/paddle2019.py:ResNet101_vd --workdir=runs/r101vd \
        --config.data_dir=/data/ILSVRC2012

The name after the colon is any of the 51 released models that had a recipe (default
ResNet50); the 2019 release's top-1 / top-5 of each is in the README's model table. The
values (epochs, schedule, lr for the recipe's global batch, L2, mixup, label smoothing, crop
scale and aspect) are those of the model's original training script, listed with their
gaps in flaxcls/recipes.py; input size and eval resize come with the model. A
different --config.batch_size scales the lr linearly. The other files in configs/ name one
model's recipe each, with their notes.
"""

from flaxcls.recipes import paddle2019_config


def get_config(model: str = "ResNet50"):
    return paddle2019_config(model)
