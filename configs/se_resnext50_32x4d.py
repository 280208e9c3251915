"""SE_ResNeXt50_32x4d on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/se_resnext50_32x4d.py --workdir=runs/se_resnext50_32x4d \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7844 / top-5 0.9396 with this recipe.
From the original scripts/train/SE_ResNeXt50_32x4d.sh (4 V100s, 200 epochs, about 282 h):
cosine decay, lr 0.1 for a global batch of 400 (scaled linearly if batch_size changes),
L2 1.2e-4; momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "SE_ResNeXt50_32x4d"
    c.num_classes = 1000
    c.num_epochs = 200
    c.batch_size = 400
    c.lr_strategy = "cosine_decay"
    c.lr = 0.1
    c.lr_base_batch_size = 400
    c.l2_decay = 1.2e-4
    c.checkpoint_every_steps = 2000
    return c
