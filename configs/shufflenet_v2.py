"""ShuffleNetV2 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/shufflenet_v2.py --workdir=runs/shufflenet_v2 \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.6880 / top-5 0.8845 with this recipe.
From the original scripts/train/ShuffleNetV2.sh (4 K40s, 240 epochs, about 156 h): cosine
decay with warm-up, lr 0.5 for a global batch of 1024 (scaled linearly if batch_size
changes), L2 4e-5; momentum 0.9 is the train.py default. Random-resized crop 224 + flip.
The warm-up length is not in the script: the 2019 cosine_decay_warmup hard-coded a linear
ramp over 5 epochs (also the train.py warm_up_epochs default). Its cosine then ran over
all 240 epochs' steps, ending at about 0.1% of lr instead of 0; here it spans the
remaining 235 epochs (see flaxcls.train.optim).
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("ShuffleNetV2")
