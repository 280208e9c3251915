"""Real data on a laptop: scikit-learn's digits as JPEGs, a tiny ResNet, 2 CPU cores.

    python launch.py --config=configs/digits.py --workdir=runs/digits

Writes the 1,797 bundled 8x8 digit images (upscaled to 32x32 JPEGs) in the original
list-file layout under <workdir>/data/digits, trains ResNet_tiny on 80% of them and
evaluates on the held-out 20%: expect top-1 above 0.95 in about a minute or two.
"""

from flaxcls.config import default_config


def get_config():
    c = default_config()
    c.model = "ResNet_tiny"
    c.builtin_dataset = "digits"
    c.num_classes = 10
    c.crop_size = 32
    c.resize_short_size = 32
    c.lower_scale = 0.6  # digits must stay recognisable
    c.random_flip = False  # a mirrored 2 is not a 2
    c.num_epochs = 12
    c.batch_size = 64
    c.test_batch_size = 128
    c.lr_strategy = "cosine_decay_warmup"
    c.warm_up_epochs = 1.0
    c.lr = 0.1
    c.l2_decay = 5e-4
    c.log_every_steps = 20
    c.checkpoint_every_steps = 100
    c.eval_every_epochs = 4
    c.reader_buf_size = 2048
    return c
