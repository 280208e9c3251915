"""SENet154_vd on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/senet154_vd.py --workdir=runs/senet154_vd \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.8140 / top-5 0.9548 with this recipe.
From the original scripts/train/SENet154_vd.sh (8 P40s, 200 epochs, about 916 h): cosine
decay, lr 0.1 for a global batch of 256 (scaled linearly if batch_size changes), L2 1e-4,
mixup and label smoothing 0.1. The script turns mixup on without an alpha, so the
train.py default 0.2 applies; momentum 0.9 is also the train.py default. Random-resized
crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("SENet154_vd")
