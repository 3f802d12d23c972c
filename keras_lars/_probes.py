"""The marker shared by the taps (which create probes) and CLARS (which reads
their gradients), so that neither module imports the other.

A probe is a float32 `keras.Variable` of shape (k, width) whose row j stands
for `targets[j]`, the j-th variable whose per-example norms it carries.
"""

_TARGETS = "_keras_lars_per_example_norm_targets"


def mark(probe, targets):
    object.__setattr__(probe, _TARGETS, tuple(targets))


def is_probe(variable):
    """Whether `variable` is a per-example norm probe (a bool): probes are
    trainable variables of a model while norms are attached, but never
    weights; a custom loop passes their gradients to `optimizer.apply` with
    the others, and CLARS takes them out."""
    return hasattr(variable, _TARGETS)


def targets(probe):
    """The variables whose rows `probe` carries, in row order."""
    return getattr(probe, _TARGETS)
