"""ShuffleNetV2_swish on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/shufflenet_v2_swish.py --workdir=runs/shufflenet_v2_swish \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7003 / top-5 0.8917 with this recipe.
The original scripts/train/ShuffleNetV2_swish.sh sets the same schedule, lr, batch and L2 as
ShuffleNetV2.sh (4 K40s, 240 epochs, about 156 h): the two recipes are the same numbers.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("ShuffleNetV2_swish")
