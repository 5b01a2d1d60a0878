"""Self-supervised pretraining of a zoo model's backbone on two augmented views of unlabelled photos:
SimCLR (NT-Xent, many negatives: large batches) or SimSiam (predictor and stop-gradient, no negatives:
small batches and CPUs).

    nabi pretrain PHOTOS --model resnet18_cifar --out RUN          # writes RUN/backbone.safetensors
    nabi train DATA --model resnet18_cifar --init RUN/backbone.safetensors

``model`` (backbone and projection head), ``data`` (two-view photos), ``pretrain`` (the run),
``cli`` (the commands). The losses are ``nabi.layers.contrastive.NTXentLoss`` and
``nabi.layers.simsiam.SimSiamLoss``.

Self-training with a noisy student (``selftrain``, ``pseudo_labels``):

    nabi self-train LABELLED UNLABELLED --model cifar_cnn --rounds 2 --out RUN   # RUN/summary.md
"""

METHODS = ("simclr", "simsiam")
"""The self-supervised methods ``nabi pretrain --method`` knows."""
