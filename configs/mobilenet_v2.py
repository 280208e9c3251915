"""MobileNetV2 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/mobilenet_v2.py --workdir=runs/mobilenet_v2 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7215 / top-5 0.9065 with this recipe.
From the original scripts/train/MobileNetV2.sh (4 V100s, 240 epochs, about 135 h): cosine
decay, lr 0.1 for a global batch of 500, L2 4e-5; momentum 0.9 is the train.py default.
Random-resized crop 224 + flip. 500 images do not split over 8 devices: there, pass e.g.
--config.batch_size=512 and the lr scales with it (0.1024).
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("MobileNetV2")
