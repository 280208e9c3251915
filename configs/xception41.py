"""Xception41 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/xception41.py --workdir=runs/xception41 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7930 / top-5 0.9453 with this recipe.
From the original scripts/train/Xception41.sh (no hardware notes): 299x299 inputs
(random-resized crop 299 + flip; eval resizes the short side to 320 and centre-crops
299), 120 epochs, cosine decay, lr 0.045 for a global batch of 256 (scaled linearly if
batch_size changes), L2 1e-4, no mixup or label smoothing; momentum 0.9 is the train.py
default.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("Xception41")
