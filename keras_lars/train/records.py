"""The run's records on disk, as JSON: written whole and then renamed, so
that a process killed while writing never leaves half a file (the trainer's
evals.json, results and run configuration; the experiments' run files)."""

import json
import os


def write_json(path, value, indent=2):
    """Writes `value` (JSON-serializable) to `path`, replacing it atomically;
    `indent` as `json.dump`'s."""
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=indent)
    os.replace(temporary, path)


def read_json(path):
    """The value in the JSON file `path`.

    Raises:
        FileNotFoundError: no file at `path`.
    """
    with open(path) as f:
        return json.load(f)
