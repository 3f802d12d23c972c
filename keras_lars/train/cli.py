"""The trainer's command line, run by its one entry point, the console
script `keras-lars-train` (`keras_lars_train.py`; `python -m train` from a
checkout is an alias). Errors the user can act on end as one
line, `PROG: error: ...`, with the error's exit status (see `errors`); a
preempted run (SIGTERM, SIGINT) ends with `PROG: preempted by ...` and status
75 once its checkpoint is written (see `preemption`)."""

import sys

from keras_lars.train.config import parse_args
from keras_lars.train.errors import TrainerError
from keras_lars.train.preemption import Preempted
from keras_lars.train.runner import run


def main(argv=None, prog="keras-lars-train"):
    config = parse_args(argv, prog=prog)
    try:
        run(config)
        return
    except TrainerError as e:
        if sys.stdout.isatty():
            print(flush=True)  # end the progress bar's line
        print(f"{prog}: {'' if isinstance(e, Preempted) else 'error: '}{e}", file=sys.stderr)
        status = e.exit_status
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        status = 1
    # Outside the handler: the traceback (and the run's objects its frames
    # hold) is gone before the interpreter shuts down.
    sys.exit(status)
