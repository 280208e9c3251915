"""SENet154_vd on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/senet154_vd.py --workdir=runs/senet154_vd \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.8140 / top-5 0.9548 with this recipe.
From the original scripts/train/SENet154_vd.sh (8 P40s, 200 epochs, about 916 h): cosine
decay, lr 0.1 for a global batch of 256 (scaled linearly if batch_size changes), L2 1e-4,
mixup and label smoothing 0.1. The script turns mixup on without an alpha, so the
train.py default 0.2 applies; momentum 0.9 is also the train.py default. Random-resized
crop 224 + flip.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "SENet154_vd"
    c.num_classes = 1000
    c.num_epochs = 200
    c.batch_size = 256
    c.lr_strategy = "cosine_decay"
    c.lr = 0.1
    c.lr_base_batch_size = 256
    c.l2_decay = 1e-4
    c.use_mixup = True
    c.mixup_alpha = 0.2
    c.use_label_smoothing = True
    c.label_smoothing_epsilon = 0.1
    c.checkpoint_every_steps = 2000
    return c
