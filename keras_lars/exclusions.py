"""Rules that pick the variables excluded from weight decay or layer adaptation.

LARS treats every trainable tensor as a "layer" with its own trust ratio. Biases
and BatchNorm parameters (rank <= 1) are, by default, excluded from both the
trust ratio and weight decay and get plain momentum SGD with the global
learning rate, as in the MLPerf ResNet-50 reference and timm.
"""

import re
import warnings

import keras

from keras_lars._backend import variable_path

__all__ = ["ExclusionRules", "is_rank_at_most_1"]


@keras.saving.register_keras_serializable(package="keras_lars")
def is_rank_at_most_1(variable):
    """The default rule: biases, BatchNorm gamma/beta and scalars (ndim <= 1)."""
    return len(variable.shape) <= 1


class ExclusionRules:
    """A set of rules that each say whether a variable is excluded.

    Args:
        rules: `None` for the default rule (`is_rank_at_most_1`), or a rule or a
            list/tuple of rules, each one of:

            - a `str`: a regular expression searched (`re.search`) in
              `variable.path` (e.g. `"conv2d/kernel"`, `"bias$"`);
            - a `keras.Variable`: that variable itself;
            - a callable `predicate(variable) -> bool`.

            An empty list excludes nothing.
        argument: the constructor argument's name, used in error messages.

    Raises:
        ValueError: a pattern that is not a valid regular expression.
        TypeError: a rule of any other type.
    """

    def __init__(self, rules, argument):
        self.argument = argument
        self.is_default = rules is None
        if rules is None:
            rules = [is_rank_at_most_1]
        elif isinstance(rules, (str, keras.Variable)) or callable(rules):
            rules = [rules]
        elif not isinstance(rules, (list, tuple)):
            raise TypeError(
                f"`{argument}` must be None, a regex string, a keras.Variable, "
                f"a callable predicate or a list of these. Received: {rules!r}"
            )
        self.rules = [self._check(rule) for rule in rules]

    def _check(self, rule):
        if isinstance(rule, str):
            try:
                re.compile(rule)
            except re.error as e:
                raise ValueError(
                    f"`{self.argument}` holds {rule!r}, which is not a valid "
                    f"regular expression: {e}. Patterns are searched in "
                    "`variable.path`, e.g. 'dense/kernel' or 'bias$'."
                ) from None
            return rule
        if isinstance(rule, keras.Variable) or callable(rule):
            return rule
        raise TypeError(
            f"`{self.argument}` holds {rule!r} of type {type(rule).__name__}; "
            "accepted are regex strings matched against `variable.path`, "
            "keras.Variable objects and callables `predicate(variable)`."
        )

    @staticmethod
    def _rule_matches(rule, variable):
        if isinstance(rule, str):
            return re.search(rule, variable_path(variable)) is not None
        if isinstance(rule, keras.Variable):
            return rule is variable
        return bool(rule(variable))

    def resolve(self, variables):
        """Returns one bool per variable (True = excluded).

        Warns (UserWarning) for each regex or variable rule that matches none
        of `variables`, naming it: a typo in a pattern would otherwise silently
        leave decay or adaptation on.
        """
        flags = [False] * len(variables)
        for rule in self.rules:
            hits = [self._rule_matches(rule, v) for v in variables]
            if not any(hits) and isinstance(rule, (str, keras.Variable)):
                shown = rule if isinstance(rule, str) else variable_path(rule)
                warnings.warn(
                    f"`{self.argument}` rule {shown!r} matches none of the "
                    f"{len(variables)} trainable variables the optimizer was "
                    "built with; regex rules are searched in `variable.path` "
                    "(e.g. 'dense/kernel').",
                    UserWarning,
                    stacklevel=3,
                )
            flags = [f or h for f, h in zip(flags, hits)]
        return flags

    def add(self, rules):
        """Appends rules (used by `Optimizer.exclude_from_weight_decay`)."""
        self.is_default = False
        self.rules.extend(self._check(rule) for rule in rules)

    def holds(self, rule):
        """Whether `rule` is one of these rules (an equal regex, or the same
        variable or predicate)."""
        return any(rule is held or (isinstance(rule, str) and rule == held) for held in self.rules)

    def get_config(self):
        """JSON-able form. Variables become exact-path regexes; predicates go
        through `keras.saving.serialize_keras_object` (register them with
        `keras.saving.register_keras_serializable` to load in safe mode)."""
        if self.is_default:
            return None
        config = []
        for rule in self.rules:
            if isinstance(rule, str):
                config.append(rule)
            elif isinstance(rule, keras.Variable):
                config.append("^" + re.escape(variable_path(rule)) + "$")
            else:
                config.append(keras.saving.serialize_keras_object(rule))
        return config

    @classmethod
    def from_config(cls, config, argument):
        if config is None:
            return cls(None, argument)
        rules = [
            rule
            if isinstance(rule, str)
            else keras.saving.deserialize_keras_object(rule)
            for rule in config
        ]
        return cls(rules, argument)
