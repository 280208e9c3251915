"""ResNet50 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/resnet50.py --workdir=runs/r50 \
        --config.data_dir=/data/ILSVRC2012 --config.batch_size=1024

120 epochs, piecewise decay x0.1 at epochs 30/60/90, lr 0.1 per 256 images (scaled
linearly with batch_size), momentum 0.9, L2 1e-4, random-resized crop 224 + flip.
The original release reached top-1 0.7650 / top-5 0.9300 with this recipe.
data_dir holds train_list.txt/val_list.txt (the original layout) or train/ and val/
class folders; for TFDS use --config.data_source=tfds --config.tfds_name=imagenet2012.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "ResNet50"
    c.num_classes = 1000
    c.num_epochs = 120
    c.batch_size = 256
    c.test_batch_size = 256
    c.lr_strategy = "piecewise_decay"
    c.step_epochs = (30, 60, 90)
    c.decay_rate = 0.1
    c.lr = 0.1
    c.lr_base_batch_size = 256
    c.l2_decay = 1e-4
    c.momentum_rate = 0.9
    # crop 224, resize 256: the model's own (ModelCfg), so --config.model=... brings its own
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
