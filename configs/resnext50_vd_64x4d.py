"""ResNeXt50_vd_64x4d on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/resnext50_vd_64x4d.py --workdir=runs/resnext50_vd_64x4d \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.8012 / top-5 0.9486 with this recipe.
From the original scripts/train/ResNeXt50_vd_64x4d.sh (no hardware notes): 200 epochs,
cosine decay, lr 0.1 for a global batch of 256 (scaled linearly if batch_size changes),
L2 1e-4 (not the 7e-5 of ResNet50_vd), mixup and label smoothing 0.1. The script turns
mixup on without an alpha, so the train.py default 0.2 applies; momentum 0.9 is also the
train.py default. Random-resized crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("ResNeXt50_vd_64x4d")
