"""SimCLR-style self-supervised pretraining with LARS, on Fashion-MNIST.

    python -m examples.simclr [--batch 256] [--epochs 10] [--optimizer lars] [--steps N] ...

Two augmented views of every image (`views.py`), an encoder (the trainer's
CIFAR ResNet without its classifier) and a projection head (`model.py`),
the NT-Xent loss (Chen et al. 2020, Eq. 1), LARS configured as SimCLR
configures it (`recipes.py`), then a linear probe on the frozen encoder's
features (`probe.py`). Works on Keras's TensorFlow, JAX and PyTorch
backends: the pretraining is one `model.fit`.
"""
