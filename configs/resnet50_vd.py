"""ResNet50_vd on ImageNet with the 2019 PaddleCV recipe for the vd models.

    python launch.py --config=configs/resnet50_vd.py --workdir=runs/r50vd \
        --config.data_dir=/data/ILSVRC2012 --config.batch_size=1024

200 epochs, cosine decay, lr 0.1 per 256 images, L2 7e-5, label smoothing 0.1 and
mixup (alpha 0.2), as in the original training script for this model; the released
model reached top-1 0.7912 / top-5 0.9444.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("ResNet50_vd")
