"""AlexNet on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/alexnet.py --workdir=runs/alexnet \
        --config.data_dir=/data/ILSVRC2012

The 2019 release reached top-1 0.5672 / top-5 0.7917 with this recipe.
From the original scripts/train/AlexNet.sh (8 P40s, about 55 h): 120 epochs, piecewise
decay, lr 0.01 for a global batch of 256 (scaled linearly if batch_size changes), L2 1e-4.
The script sets no decay steps or momentum, so the train.py defaults apply: x0.1 at epochs
30/60/90 (the 2019 optimizer hard-coded 0.1) and momentum 0.9. Random-resized crop 224 + flip.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("AlexNet")
