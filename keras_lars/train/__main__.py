"""The trainer's command line: `keras-lars-train` (installed) or
`python -m train` (from a checkout). Errors the user can act on end as one
line, `PROG: error: ...`, with the error's exit status (see `errors`)."""

import sys

from keras_lars.train.config import parse_args
from keras_lars.train.errors import TrainerError
from keras_lars.train.runner import run


def main(argv=None, prog="keras-lars-train"):
    config = parse_args(argv, prog=prog)
    try:
        run(config)
    except TrainerError as e:
        if sys.stdout.isatty():
            print(flush=True)  # end the progress bar's line
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_status)
    except FileNotFoundError as e:
        sys.exit(f"{prog}: error: {e}")


if __name__ == "__main__":
    main(prog="python -m keras_lars.train")
