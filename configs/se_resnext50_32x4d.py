"""SE_ResNeXt50_32x4d on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/se_resnext50_32x4d.py --workdir=runs/se_resnext50_32x4d \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7844 / top-5 0.9396 with this recipe.
From the original scripts/train/SE_ResNeXt50_32x4d.sh (4 V100s, 200 epochs, about 282 h):
cosine decay, lr 0.1 for a global batch of 400 (scaled linearly if batch_size changes),
L2 1.2e-4; momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("SE_ResNeXt50_32x4d")
