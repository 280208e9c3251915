"""SqueezeNet1_1 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/squeezenet1_1.py --workdir=runs/squeezenet1_1 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.6008 / top-5 0.8185 with this recipe.
From the original scripts/train/SqueezeNet1_1.sh (no hardware notes): 120 epochs, cosine
decay, lr 0.02 for a global batch of 256 (scaled linearly if batch_size changes), L2 1e-4;
momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("SqueezeNet1_1")
