"""DarkNet53 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/darknet53.py --workdir=runs/darknet53 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7804 / top-5 0.9405 with this recipe.
From the original scripts/train/DarkNet53.sh (no hardware notes): 256x256 inputs
(random-resized crop 256 + flip; eval resizes the short side to 256 and centre-crops 256,
so it sees the whole short side), 200 epochs, cosine decay, lr 0.1 for a global batch of
256 (scaled linearly if batch_size changes), L2 1e-4, mixup and label smoothing 0.1. The
script turns mixup on without an alpha, so the train.py default 0.2 applies; momentum 0.9
is also the train.py default.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("DarkNet53")
