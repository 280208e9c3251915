"""ResNet50 on ImageNet with the 2019 PaddleCV recipe.

    python launch.py --config=configs/resnet50.py --workdir=runs/r50 \
        --config.data_dir=/data/ILSVRC2012 --config.batch_size=1024

120 epochs, piecewise decay x0.1 at epochs 30/60/90, lr 0.1 per 256 images (scaled
linearly with batch_size), momentum 0.9, L2 1e-4, random-resized crop 224 + flip.
The original release reached top-1 0.7650 / top-5 0.9300 with this recipe.
data_dir holds train_list.txt/val_list.txt (the original layout) or train/ and val/
class folders; for TFDS use --config.data_source=tfds --config.tfds_name=imagenet2012.
"""

from flaxcls.recipes import paddle2019_config


def get_config():
    return paddle2019_config("ResNet50")
