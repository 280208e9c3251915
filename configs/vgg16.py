"""VGG16 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/vgg16.py --workdir=runs/vgg16 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7200 / top-5 0.9069 with this recipe.
From the original scripts/train/VGG16.sh (8 P40s, 90 epochs, about 72 h): cosine decay,
lr 0.01 for a global batch of 256 (scaled linearly if batch_size changes), L2 3e-4;
momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("VGG16")
