"""MobileNetV1 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/mobilenet_v1.py --workdir=runs/mobilenet_v1 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7099 / top-5 0.8968 with this recipe.
From the original scripts/train/MobileNetV1.sh (4 V100s, 120 epochs, about 55 h):
piecewise decay, lr 0.1 for a global batch of 256 (scaled linearly if batch_size
changes), L2 3e-5. The script sets no decay steps or momentum, so the train.py defaults
apply: x0.1 at epochs 30/60/90 (the 2019 optimizer hard-coded 0.1) and momentum 0.9.
Random-resized crop 224 + flip.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "MobileNetV1"
    c.num_classes = 1000
    c.num_epochs = 120
    c.batch_size = 256
    c.lr_strategy = "piecewise_decay"
    c.step_epochs = (30, 60, 90)
    c.decay_rate = 0.1
    c.lr = 0.1
    c.lr_base_batch_size = 256
    c.l2_decay = 3e-5
    c.checkpoint_every_steps = 2000
    return c
