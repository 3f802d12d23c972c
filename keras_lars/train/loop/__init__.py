"""The trainer's outer loop, split as Orbit splits it (orbit/controller.py,
orbit/standard_runner.py):

- `controller.Controller`: generic; cuts each epoch into device loops and
  calls the trainer, the evaluator and the actions.
- `trainer.Trainer`: the train input and the device loops (steps counted,
  timed, the divergence guard on their losses).
- `evaluator.Evaluator`: one pass over the eval split.
- `actions/`: what runs between loops, one small class per file.
- `clock.WallClock`: the run's wall time by part.

The parts they drive (model, input pipeline, `steps.Steps`, checkpoints,
MLPerf log) are the modules of `keras_lars.train` itself; `runner.py`
builds them and chooses the actions.
"""
