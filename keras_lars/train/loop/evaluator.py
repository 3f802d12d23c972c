"""The evaluator, as Orbit's `StandardEvaluator`: top-1 and mean loss over
the whole eval split, each example once (MLPerf's eval)."""

import numpy as np


class Evaluator:
    """Args:
        steps: `steps.Steps` (its `eval_step`).
        strategy: the run's `tf.distribute.Strategy`.
        pipeline: `input_pipeline.InputPipeline` (its eval split and steps).
        check_finite: callable(step), raising if a weight or optimizer value
            is not finite (`guard.WeightGuard.check`): a diverged model is
            not evaluated.
    """

    def __init__(self, steps, strategy, pipeline, check_finite):
        self._steps, self._strategy, self._pipeline, self._check_finite = steps, strategy, pipeline, check_finite
        self._iterator = None

    def evaluate(self, epoch, step):
        """Returns:
            {"top1": float, "loss": float, "examples": int, "step": `step`}.

        Raises:
            RuntimeError: the eval did not see each eval example once.
        """
        self._check_finite(step)
        pipeline = self._pipeline
        if self._iterator is None:
            # One iterator for every eval (the dataset repeats): releasing
            # one is slow.
            self._iterator = iter(self._strategy.distribute_datasets_from_function(pipeline.eval_dataset_fn()))
        totals = np.zeros(3)
        with pipeline.reading(pipeline.info.eval_split):
            for _ in range(pipeline.eval_steps):
                totals += [float(x) for x in self._steps.eval_step(self._iterator)]
        correct, count, loss_sum = totals
        if int(count) != pipeline.info.eval_examples:
            raise RuntimeError(f"Evaluated {count} examples, expected {pipeline.info.eval_examples}.")
        return {"top1": float(correct / count), "loss": float(loss_sum / count), "examples": int(count),
                "step": step}

    def close(self):
        """Releases the eval iterator."""
        self._iterator = None
