"""ResNet50 on ImageNet with torchvision's 2021 recipe (published top-1 0.8086).

    python launch.py --config=configs/resnet50_modern.py --workdir=runs/r50_modern \
        --config.data_dir=/data/ILSVRC2012

600 epochs at batch 1024 (lr 0.5, scaled linearly with batch_size), cosine after 5 linear
warm-up epochs, weight decay 2e-5 spared on norm layers, label smoothing 0.1, mixup 0.2 or
CutMix 1.0 per batch, TrivialAugment wide, random erasing 0.1, repeated augmentation x4,
trained at 176 px and evaluated at 224 of 232, an EMA of the weights every 32 steps (the
one evaluated and served). torchvision's ResNet50_Weights.IMAGENET1K_V2 reached top-1
0.80858 / top-5 0.95434 with it; the values, their sources and where ours differ are in
flaxcls/recipes.py (MODERN).
"""

from flaxcls.recipes import modern_config


def get_config():
    return modern_config("torchvision2021/ResNet50")
