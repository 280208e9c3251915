"""CIFAR-10 speed run: SpeedNet_cifar from device-resident CIFAR-10 JPEGs, about 10 epochs.

    python launch.py --config=configs/cifar10.py --workdir=runs/cifar10

Measured: see the README's "CIFAR-10 time to accuracy" (GPU: not yet measured, no GPU was
available; the 2-core CPU's shortened schedule is there with its accuracy and time).

Data: the CIFAR-10 images as class folders, `train/<class>/*.jpg` (50,000) and
`test/<class>/*.jpg` (10,000), under `data/cifar10` beside launch.py by default
(`--config.data_dir=PATH` elsewhere). The project never downloads: unpack a copy you have,
e.g. `mkdir -p data && tar xzf cifar10-jpeg.tar.gz -C data`. The train split is decoded once
(cached in the workdir) and kept on the device; each step draws, crops and flips its batch there.

The recipe is airbench94's (github KellerJordan/cifar10-airbench, legacy/airbench94.py,
hyperparameters read there) in this trainer's terms:
- batch 1024, 9.9 epochs, Nesterov momentum 0.85;
- airbench's lr 11.5 and weight decay 0.0153 "per 1024 examples" on a summed loss with its
  momentum normalisation (lr / (1024 * (1 + 1 / (1 - momentum)))) are lr 1.5 and coupled L2
  0.00133 on our mean loss (the same update);
- its schedule (linear from 0.2x up to 1x over 23% of the steps, then down to 0.07x) as a
  linear warm-up over 2.3 epochs from 0 and a linear decay to 0.07 x lr;
- label smoothing 0.2; flip, and translation by up to 2 pixels (crop_padding; airbench pads by
  reflection, we pad with zeros);
- its look-ahead weight averaging every 5 steps, whose strength grows during training, as an
  EMA every 5 steps with decay 0.95^5 = 0.774 and warm-up, whose weights are evaluated; its mirror test-time augmentation as eval_flip (it adds
  translated copies too, which we do not have);
- BatchNorm momentum 0.6 and logits scaled by 1/9 are in the model (SpeedNet_cifar).

Not expressible in this trainer, so left out: the first layer's whitening initialisation from
the training images (and freezing its bias after 3 epochs), BatchNorm scales frozen at 1, and
the 64x learning rate of the BatchNorm offsets.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "SpeedNet_cifar"
    c.num_classes = 10
    c.dtype = "bfloat16"
    c.data_dir = "data/cifar10"
    c.train_split, c.eval_split = "train", "test"
    c.device_resident_data = True
    c.crop_padding = 2
    c.random_flip = True
    c.eval_flip = True
    c.batch_size = 1024
    c.test_batch_size = 2000
    c.num_epochs = 9.9
    c.optimizer = "nesterov"
    c.momentum_rate = 0.85
    c.lr = 1.5
    c.l2_decay = 0.0153 / 11.5
    c.lr_strategy = "linear_decay_warmup"
    c.warm_up_epochs = 2.3
    c.end_lr = 0.07 * 1.5
    c.use_label_smoothing = True
    c.label_smoothing_epsilon = 0.2
    c.ema_decay = 0.95**5
    c.ema_every_steps = 5
    c.ema_warmup = True  # like airbench's averaging, weak at first
    c.log_every_steps = 48
    c.eval_every_epochs = 1000  # one eval, at the end
    c.checkpoint_every_steps = 100_000  # one checkpoint, at the end
    return c
