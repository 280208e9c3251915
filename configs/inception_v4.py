"""InceptionV4 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/inception_v4.py --workdir=runs/inception_v4 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.8077 / top-5 0.9526 with this recipe.
From the original scripts/train/InceptionV4.sh (8 V100s, 200 epochs, about 367 h): 299x299
inputs (random-resized crop 299 + flip; eval resizes the short side to 320 and
centre-crops 299), cosine decay, lr 0.045 for a global batch of 256 (scaled linearly if
batch_size changes), L2 1e-4, mixup and label smoothing 0.1. The script turns mixup on
without an alpha, so the train.py default 0.2 applies; momentum 0.9 is also the train.py
default.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("InceptionV4")
