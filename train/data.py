"""Datasets through tensorflow-datasets, with an offline path for Fashion-MNIST."""

import gzip
import os
import shutil
import tempfile
import urllib.parse

import tensorflow as tf
import tensorflow_datasets as tfds

# Debian's `dataset-fashion-mnist`: the four IDX .gz files TFDS downloads,
# re-compressed by Debian (so TFDS's registered checksums do not match).
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# Per-channel mean and standard deviation of pixel values in [0, 1].
NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


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


def get_builder(name, data_dir=None, manual_dir=None):
    """Returns a prepared TFDS builder for `name`.

    `fashion_mnist` is prepared from Debian's files when they are present (no
    network needed), else downloaded by TFDS. `imagenet2012` reads the
    ILSVRC2012 tars from `manual_dir`. Anything else goes through TFDS as is.
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if name == "fashion_mnist" and os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
        prepare_fashion_mnist_from_local(builder.data_dir_root)
        return tfds.builder(name, data_dir=data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_config=download_config)
    return builder


def _preprocess(name, image_size):
    mean, std = NORMALIZATION.get(name, ((0.5,), (0.5,)))

    def fn(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if image_size is not None:
            image = tf.image.resize(image, (image_size, image_size))
        return (image - mean) / std, label

    return fn


def make_datasets(name, global_batch_size, data_dir=None, manual_dir=None, image_size=None, seed=0):
    """Builds the train and eval `tf.data.Dataset`s and reads the dataset's metadata.

    Args:
        name: TFDS name, e.g. "fashion_mnist", "cifar10", "imagenet2012".
        global_batch_size: int, examples per step over all replicas.
        data_dir, manual_dir: TFDS directories (None: TFDS's defaults).
        image_size: int to resize square images to, or None to keep them.
        seed: shuffle seed.

    Returns:
        (train_ds, eval_ds, info) where train batches drop the remainder (a
        constant global batch for the schedule) and eval keeps every example.
        `info` holds `num_classes`, `input_shape`, `train_examples`,
        `eval_examples`, `eval_split`.
    """
    builder = get_builder(name, data_dir, manual_dir)
    shape = builder.info.features["image"].shape
    if image_size is None and None in shape[:2]:
        raise ValueError(f"{name}'s images vary in size ({shape}): pass an --image-size (e.g. 224).")
    splits = builder.info.splits
    eval_split = "validation" if "validation" in splits else "test"
    preprocess = _preprocess(name, image_size)
    input_shape = (image_size or shape[0], image_size or shape[1], shape[2])
    options = tf.data.Options()
    options.deterministic = True

    train = builder.as_dataset(split="train", as_supervised=True, shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=seed))
    train = (
        train.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .shuffle(min(splits["train"].num_examples, 60_000), seed=seed, reshuffle_each_iteration=True)
        .map(lambda x, y: (tf.image.random_flip_left_right(x, seed=seed), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(global_batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    evaluation = (
        builder.as_dataset(split=eval_split, as_supervised=True)
        .map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        .cache()
        .batch(global_batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    info = {
        "num_classes": builder.info.features["label"].num_classes,
        "input_shape": input_shape,
        "train_examples": splits["train"].num_examples,
        "eval_examples": splits[eval_split].num_examples,
        "eval_split": eval_split,
    }
    return train, evaluation, info
