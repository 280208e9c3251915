"""ShuffleNetV2_swish on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/shufflenet_v2_swish.py --workdir=runs/shufflenet_v2_swish \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.7003 / top-5 0.8917 with this recipe.
From the original scripts/train/ShuffleNetV2_swish.sh (4 K40s, 240 epochs, about 156 h): cosine
decay with warm-up, lr 0.5 for a global batch of 1024 (scaled linearly if batch_size
changes), L2 4e-5; momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
The warm-up length is not in the script: the 2019 cosine_decay_warmup hard-coded a linear
ramp over 5 epochs (also the train.py warm_up_epochs default). Its cosine then ran over
all 240 epochs' steps, ending at about 0.1% of lr instead of 0; here it spans the
remaining 235 epochs (see flaxcls.train.optim).
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "ShuffleNetV2_swish"
    c.num_classes = 1000
    c.num_epochs = 240
    c.batch_size = 1024
    c.lr_strategy = "cosine_decay_warmup"
    c.warm_up_epochs = 5.0
    c.lr = 0.5
    c.lr_base_batch_size = 1024
    c.l2_decay = 4e-5
    c.checkpoint_every_steps = 2000
    return c
