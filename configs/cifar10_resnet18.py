"""CIFAR-10 with ResNet18_cifar (the common CIFAR ResNet-18): about 95% top-1.

    python launch.py --config=configs/cifar10_resnet18.py --workdir=runs/cifar10_resnet18

Measured: see the README's "CIFAR-10 time to accuracy" (GPU: not yet measured, no GPU was
available).

Data as in configs/cifar10.py: class folders `train/` and `test/` under `data/cifar10` by
default (`--config.data_dir=PATH`), decoded once and kept on the device.

Recipe: the usual CIFAR ResNet-18 schedule made shorter by a larger batch and label
smoothing: batch 512, 40 epochs, Nesterov momentum 0.9, lr 0.4 (0.1 per 128 images, scaled
linearly), 1 warm-up epoch then cosine, coupled L2 5e-4 on every weight, label smoothing 0.1,
random crop from the image padded by 4 and flip (as in He et al. 2016's CIFAR experiments),
mirror test-time augmentation.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "ResNet18_cifar"
    c.num_classes = 10
    c.dtype = "bfloat16"
    c.data_dir = "data/cifar10"
    c.train_split, c.eval_split = "train", "test"
    c.device_resident_data = True
    c.crop_padding = 4
    c.random_flip = True
    c.eval_flip = True
    c.batch_size = 512
    c.test_batch_size = 1000
    c.num_epochs = 40
    c.optimizer = "nesterov"
    c.momentum_rate = 0.9
    c.lr = 0.4
    c.l2_decay = 5e-4
    c.lr_strategy = "cosine_decay_warmup"
    c.warm_up_epochs = 1.0
    c.use_label_smoothing = True
    c.label_smoothing_epsilon = 0.1
    c.log_every_steps = 97
    c.eval_every_epochs = 10
    c.checkpoint_every_steps = 1000
    return c
