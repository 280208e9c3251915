"""ResNet50_vd on ImageNet with the 2019 PaddleCV recipe for the vd models.

    python launch.py --config=configs/resnet50_vd.py --workdir=runs/r50vd \
        --config.data_dir=/data/ILSVRC2012 --config.batch_size=1024

200 epochs, cosine decay, lr 0.1 per 256 images, L2 7e-5, label smoothing 0.1 and
mixup (alpha 0.2), as in the original training script for this model; the released
model reached top-1 0.7912 / top-5 0.9444.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "ResNet50_vd"
    c.num_classes = 1000
    c.num_epochs = 200
    c.batch_size = 256
    c.lr_strategy = "cosine_decay"
    c.lr = 0.1
    c.lr_base_batch_size = 256
    c.l2_decay = 7e-5
    c.use_label_smoothing = True
    c.label_smoothing_epsilon = 0.1
    c.use_mixup = True
    c.mixup_alpha = 0.2
    c.checkpoint_every_steps = 2000
    return c
