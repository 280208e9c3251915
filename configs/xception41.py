"""Xception41 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/xception41.py --workdir=runs/xception41 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7930 / top-5 0.9453 with this recipe.
From the original scripts/train/Xception41.sh (no hardware notes): 299x299 inputs
(random-resized crop 299 + flip; eval resizes the short side to 320 and centre-crops
299), 120 epochs, cosine decay, lr 0.045 for a global batch of 256 (scaled linearly if
batch_size changes), L2 1e-4, no mixup or label smoothing; momentum 0.9 is the train.py
default.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "Xception41"
    c.num_classes = 1000
    c.num_epochs = 120
    c.batch_size = 256
    # crop 299, resize 320: the model's own (ModelCfg), so --config.model=... brings its own
    c.lr_strategy = "cosine_decay"
    c.lr = 0.045
    c.lr_base_batch_size = 256
    c.l2_decay = 1e-4
    c.checkpoint_every_steps = 2000
    return c
