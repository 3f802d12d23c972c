"""The LARS settings of the self-supervised recipes that train with it, as
`keras_lars.LARS` arguments (from the papers and their official code).

Each recipe scales the peak learning rate with the global batch B (the
per-replica batch times the replicas) and warms up for 10 epochs, then
decays with a cosine; `schedule(...)` builds that schedule in steps.
"""

import keras

from keras_lars.train import optimizers

# SimCLR (Chen et al. 2020, Appendix B.1 and the official code): the trust
# ratio over the decayed gradient, eta ||w|| / ||g + beta w||; BatchNorm
# parameters and biases (rank <= 1, the default rule) excluded from both
# decay and adaptation.
SIMCLR = dict(momentum=0.9, weight_decay=1e-6, eta=0.001, trust_ratio_denominator="norm_of_sum")
SIMCLR_BASE_LR = 0.3  # x B / 256 (or 0.075 x sqrt(B) for small batches)

# BYOL (Grill et al. 2020): lr 0.2 x B/256, weight decay 1.5e-6, the same exclusions.
BYOL = dict(momentum=0.9, weight_decay=1.5e-6, eta=0.001, trust_ratio_denominator="norm_of_sum")
BYOL_BASE_LR = 0.2

# Barlow Twins (Zbontar et al. 2021): B = 2048, lr 0.2 for the weights and
# 0.0048 for biases and BatchNorm (two optimizers, or one LARS with the
# learning rate scaled per group), weight decay 1.5e-6.
BARLOW_TWINS = dict(momentum=0.9, weight_decay=1.5e-6, eta=0.001, trust_ratio_denominator="norm_of_sum")
BARLOW_TWINS_LR = dict(weights=0.2, biases_and_norms=0.0048)

# VICReg (Bardes et al. 2022): base lr 0.2 x B/256, weight decay 1e-6,
# biases and norms excluded from both.
VICREG = dict(momentum=0.9, weight_decay=1e-6, eta=0.001, trust_ratio_denominator="norm_of_sum")
VICREG_BASE_LR = 0.2


def schedule(peak_learning_rate, total_steps, warmup_steps):
    """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps`, then
    a cosine to 0 at `total_steps` (Keras's `CosineDecay`; steps, not epochs)."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}]. Received: {warmup_steps!r}")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )


def simclr_lars(peak_learning_rate, total_steps, warmup_steps):
    """`keras_lars.LARS` as SimCLR configures it (`SIMCLR`), with its warmup
    and cosine schedule peaking at `peak_learning_rate` (SimCLR:
    `SIMCLR_BASE_LR` x B/256, B the global batch of images, not views)."""
    return optimizers.build_optimizer("lars", schedule(peak_learning_rate, total_steps, warmup_steps), **SIMCLR)
