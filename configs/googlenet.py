"""GoogLeNet on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/googlenet.py --workdir=runs/googlenet \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7070 / top-5 0.8966 with this recipe.
From the original scripts/train/GoogLeNet.sh (4 V100s, 200 epochs, about 132 h): cosine
decay, lr 0.01 for a global batch of 256 (scaled linearly if batch_size changes), L2 1e-4;
momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
The original loss also added 0.3 x the cross-entropy of each auxiliary head
(flaxcls.models.googlenet.AUX_LOSS_WEIGHTS); the trainer's step does the same.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("GoogLeNet")
