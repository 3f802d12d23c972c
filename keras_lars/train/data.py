"""TFDS builders: ImageNet from its manual_dir tars, Fashion-MNIST offline from Debian's files."""

import contextlib
import difflib
import fcntl
import gzip
import os
import re
import shutil
import tempfile
import urllib.parse

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_lars.train.errors import DataError, UsageError

# Debian's `dataset-fashion-mnist`: the four IDX .gz files TFDS downloads,
# re-compressed by Debian (so TFDS's registered checksums do not match).
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class _LocalFiles:
    """Stands in for TFDS's DownloadManager: maps each URL's file name to the
    decompressed copy of a local file, so that the real builder's
    `_split_generators` and `_generate_examples` run unchanged."""

    def __init__(self, source_dir, work_dir):
        self._source_dir = source_dir
        self._work_dir = work_dir

    def download_and_extract(self, urls):
        return {key: self._extract(os.path.basename(urllib.parse.urlparse(url).path)) for key, url in urls.items()}

    def _extract(self, filename):
        source = os.path.join(self._source_dir, filename)
        target = os.path.join(self._work_dir, filename[: -len(".gz")])
        with gzip.open(source, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return target


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST, skip_registration=True):
    """The real `fashion_mnist` builder (same name, version, features and
    example generation), reading its four IDX files from a local directory."""

    name = "fashion_mnist"

    def __init__(self, *, source_dir, **kwargs):
        self._source_dir = source_dir
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        self._work_dir = tempfile.mkdtemp(prefix="fashion_mnist_")
        return super()._split_generators(_LocalFiles(self._source_dir, self._work_dir))

    def _download_and_prepare(self, dl_manager, download_config):
        try:
            return super()._download_and_prepare(dl_manager, download_config)
        finally:
            shutil.rmtree(getattr(self, "_work_dir", ""), ignore_errors=True)


def prepare_fashion_mnist_from_local(data_dir, source_dir=DEBIAN_FASHION_MNIST_DIR):
    """Prepares TFDS `fashion_mnist` in `data_dir` from local IDX .gz files.

    Raises:
        FileNotFoundError: naming the missing files.
    """
    missing = [f for f in FASHION_MNIST_FILES if not os.path.exists(os.path.join(source_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing from {source_dir}: {missing}. "
            "Install Debian's `dataset-fashion-mnist` package or let TFDS download it."
        )
    _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir).download_and_prepare()


IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def check_imagenet_manual_dir(manual_dir):
    """Raises FileNotFoundError naming the ILSVRC2012 tars missing from `manual_dir`."""
    if not manual_dir:
        raise FileNotFoundError(
            "imagenet2012 is not prepared: pass --manual-dir, a directory holding "
            + " and ".join(IMAGENET_TARS) + " (from https://image-net.org/download-images)."
        )
    missing = [f for f in IMAGENET_TARS if not os.path.exists(os.path.join(manual_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"--manual-dir {manual_dir} lacks {', '.join(missing)}: TFDS's imagenet2012 builder needs "
            + " and ".join(IMAGENET_TARS) + " there (from https://image-net.org/download-images)."
        )


def get_builder(name, data_dir=None, manual_dir=None):
    """Returns a prepared TFDS builder for `name`.

    `fashion_mnist` is prepared from Debian's files when they are present (no
    network needed), else downloaded by TFDS. `imagenet2012` is prepared by the
    real TFDS builder from the ILSVRC2012 tars in `manual_dir`. Anything else
    goes through TFDS as is.

    Raises:
        UsageError: `name` is not a TFDS dataset.
        FileNotFoundError: imagenet2012 unprepared and its tars missing from
            `manual_dir` (the message names them).
    """
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(
            f"--dataset {name!r} is not a TFDS dataset: {hint}e.g. imagenet2012, fashion_mnist, cifar10 "
            "(all names: tensorflow_datasets.list_builders())."
        ) from None
    if builder.is_prepared():
        return builder
    with _preparing(builder.data_dir_root, name):
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():  # another process prepared it while this one waited
            return builder
        if name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
            prepare_fashion_mnist_from_local(builder.data_dir_root)
            return tfds.builder(name, data_dir=data_dir)
        if name == "imagenet2012":
            check_imagenet_manual_dir(manual_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
        builder.download_and_prepare(download_config=download_config)
        return builder


@contextlib.contextmanager
def _preparing(data_dir_root, name):
    """Holds an exclusive lock on `name` in `data_dir_root` while preparing:
    TFDS writes into one `incomplete.*` directory per version, so two
    processes preparing at once (the workers of a multi-worker run on one
    host, an experiment's process pool, two trainers) break each other's
    writes ("Failed to finalize writing of split"). The second waits. A
    remote data dir (gs://...) gets no lock: fcntl locks only local files."""
    if "://" in str(data_dir_root):
        yield
        return
    os.makedirs(data_dir_root, exist_ok=True)
    with open(os.path.join(data_dir_root, f".{name}.prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def reading(builder, name, split):
    """Turns a corrupted record met while reading `split` of the prepared
    dataset `name` (TensorFlow's DataLossError, which names no file) into a
    `DataError` naming the dataset, the split, the damaged files and how to
    prepare them anew."""
    try:
        yield
    except tf.errors.DataLossError as e:
        detail = error_summary(e)
        paths = [str(p) for p in builder.info.splits[split].filepaths]
        print(f"checking the {len(paths)} files of {name}'s {split} split for corrupted records...")
        damaged = corrupted_files(paths) or {"(no file failed when read again)": detail}
        files = "; ".join(f"{path} ({error})" for path, error in damaged.items())
        again = " (imagenet2012: with --manual-dir)" if name == "imagenet2012" else ""
        raise DataError(
            f"{name}'s prepared {split} split is corrupted: {files}. Delete "
            f"{builder.data_dir} and run again to prepare it anew{again}; checkpoints are untouched."
        ) from None


def corrupted_files(paths):
    """Reads each TFRecord file of `paths` through; returns {path: first
    error line} for those with a corrupted record (empty if none)."""
    damaged = {}
    for path in paths:
        try:
            for _ in tf.data.TFRecordDataset(path):
                pass
        except tf.errors.DataLossError as e:
            damaged[path] = error_summary(e)
    return damaged


def error_summary(error):
    """A TensorFlow op error's message as one short line: "corrupted record
    at 626", without the function-node prefix and the op suffix."""
    text = (error.message.strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:.*$", "", text) or type(error).__name__
