"""Self-supervised pretraining: SimCLR (NT-Xent on two augmented views) of a zoo model's backbone.

    nabi pretrain PHOTOS --model resnet18_cifar --out RUN          # writes RUN/backbone.safetensors
    nabi train DATA --model resnet18_cifar --init RUN/backbone.safetensors

``model`` (backbone and projection head), ``data`` (two-view photos), ``pretrain`` (the run),
``cli`` (the command). The loss is ``nabi.layers.contrastive.NTXentLoss``.
"""

METHODS = ("simclr",)
"""The self-supervised methods ``nabi pretrain --method`` knows."""
