"""Self-supervised pretraining of a zoo model's backbone on two augmented views of unlabelled photos:
SimCLR (NT-Xent, many negatives: large batches), SimSiam (predictor and stop-gradient, no negatives:
small batches and CPUs) or BYOL (predictor against a slowly moving average of the network, no negatives).

    nabi pretrain PHOTOS --model resnet18_cifar --out RUN          # writes RUN/backbone.safetensors
    nabi train DATA --model resnet18_cifar --init RUN/backbone.safetensors

``model`` (backbone and heads; BYOL's target network), ``data`` (two-view photos), ``ema`` (BYOL's target
update and its momentum schedule), ``collapse`` (the collapse statistic of SimSiam and BYOL), ``pretrain``
(the run); the commands are ``nabi.cli.pretrain`` and ``nabi.cli.self_train``. The losses are
``nabi.layers.contrastive.NTXentLoss``, ``nabi.layers.simsiam.SimSiamLoss`` and ``nabi.layers.byol.BYOLLoss``.

Self-training with a noisy student (``selftrain``, ``pseudo_labels``):

    nabi self-train LABELLED UNLABELLED --model cifar_cnn --rounds 2 --out RUN   # RUN/summary.md
"""

METHODS = ("simclr", "simsiam", "byol")
"""The self-supervised methods ``nabi pretrain --method`` knows."""
