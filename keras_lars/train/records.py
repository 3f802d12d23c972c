"""The run's records on disk, as JSON: written whole and then renamed, so
that a process killed while writing never leaves half a file: the
trainer's evals.json (`read_evals`, `write_evals`), its summary.json
(`summary_path`) and run configuration, and the experiments' run files;
and the weights' fingerprint that summary.json carries."""

import hashlib
import json
import os

import keras
import numpy as np


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


def evals_path(output_dir):
    return os.path.join(output_dir, "evals.json")


def read_evals(output_dir):
    """{epoch (int): eval record (dict)} of the run in `output_dir`; {} before
    its first eval."""
    try:
        return {int(e): r for e, r in read_json(evals_path(output_dir)).items()}
    except FileNotFoundError:
        return {}


def write_evals(output_dir, evals):
    """Writes `evals` ({epoch: record}) as the run's evals.json."""
    write_json(evals_path(output_dir), {str(e): r for e, r in evals.items()})


def summary_path(output_dir, task_id=None):
    """summary.json of the chief (`task_id` None), or of worker `task_id` in
    its own folder (for checking that every worker ended alike)."""
    if task_id is None:
        return os.path.join(output_dir, "summary.json")
    directory = os.path.join(output_dir, "workers", str(task_id))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, "summary.json")


def weights_fingerprint(model):
    """SHA-256 (hex) of all the model's weights (float32 bytes, in order)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value), np.float32).tobytes())
    return digest.hexdigest()
