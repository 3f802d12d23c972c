"""tf.data input for `tf.distribute`: per-worker sharded, deterministic and
resumable train epochs, and a padded eval pass that counts every example once.

Each worker (input pipeline) reads its own contiguous slice of a split
(`train[start:end]`, exact example boundaries through TFDS). An epoch's order
and augmentation depend only on (seed, epoch, worker), so a run resumed in the
middle of an epoch sees the same batches as one that never stopped.
"""

import dataclasses
import functools
import math

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_lars.train import preprocessing
from keras_lars.train.data import get_builder, reading
from keras_lars.train.errors import UsageError

# Records held for shuffling after file-level shuffling (MLPerf reference: 10,000).
IMAGENET_SHUFFLE_BUFFER = 10_000
SMALL_SHUFFLE_BUFFER = 60_000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know of a dataset."""

    name: str
    num_classes: int
    input_shape: tuple
    train_examples: int
    eval_examples: int
    eval_split: str


def shard_split(split, num_examples, index, count):
    """Worker `index` of `count`'s slice of `split`: (TFDS split string, size).
    Slices differ in size by at most one example and cover the split once."""
    start, end = num_examples * index // count, num_examples * (index + 1) // count
    return f"{split}[{start}:{end}]", end - start


class InputPipeline:
    """Builds per-replica-batched datasets for `strategy.distribute_datasets_from_function`.

    Args:
        dataset: TFDS name; "imagenet2012" gets the MLPerf reference's
            preprocessing on undecoded JPEG bytes, others mean/std scaling.
        micro_batch_size: int, examples per forward/backward pass over all
            replicas (global batch / gradient accumulation steps).
        image_size: int, square image size; 0 keeps the dataset's (224 for
            imagenet2012).
        seed: int, shuffling and augmentation seed.
        data_dir, manual_dir: TFDS directories (None: TFDS's defaults).

    Raises:
        UsageError: an unknown dataset, or images that vary in size and no
            `image_size`.
        FileNotFoundError: imagenet2012 tars missing from `manual_dir`.
    """

    def __init__(self, dataset, micro_batch_size, image_size=0, seed=0, data_dir=None, manual_dir=None):
        self._builder = get_builder(dataset, data_dir, manual_dir)
        self._imagenet = dataset == "imagenet2012"
        self._image_size = image_size or (224 if self._imagenet else 0)
        self.micro_batch_size = micro_batch_size
        self._seed = seed
        features = self._builder.info.features
        shape = features["image"].shape
        if not self._image_size and None in shape[:2]:
            raise UsageError(f"{dataset}'s images vary in size ({shape}): pass an --image-size (e.g. 224).")
        splits = self._builder.info.splits
        eval_split = "validation" if "validation" in splits else "test"
        self.info = DatasetInfo(
            name=dataset,
            num_classes=features["label"].num_classes,
            input_shape=(self._image_size or shape[0], self._image_size or shape[1], shape[2]),
            train_examples=splits["train"].num_examples,
            eval_examples=splits[eval_split].num_examples,
            eval_split=eval_split,
        )

    def reading(self, split):
        """A context that turns a corrupted record met while reading `split`
        into a `DataError` naming the damaged files (`data.reading`)."""
        return reading(self._builder, self.info.name, split)

    @property
    def eval_steps(self):
        """Eval steps of `micro_batch_size` examples (the last ones padded)."""
        return math.ceil(self.info.eval_examples / self.micro_batch_size)

    def _read(self, split, shuffle_seed=None):
        decoders = {"image": tfds.decode.SkipDecoding()} if self._imagenet else None
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
        return self._builder.as_dataset(
            split=split, shuffle_files=shuffle_seed is not None, decoders=decoders, read_config=read_config
        )

    def train_dataset_fn(self, epoch, skip_micro_steps=0, epochs=1, micro_steps_per_epoch=None):
        """The dataset function for 0-based epochs `epoch` .. `epoch + epochs
        - 1`, one after the other, starting after `skip_micro_steps`
        micro-batches of the first (a resumed run). One dataset (and so one
        iterator) for a whole run: the next epoch's shuffle buffer fills in
        the background while the last steps of the previous run, and no
        iterator is torn down at an epoch end (its destructor stalled the
        loop for seconds). Skipped records are dropped before decoding.

        Args:
            epoch, epochs: ints, the first 0-based epoch and how many.
            skip_micro_steps: int, micro-batches of the first epoch already trained.
            micro_steps_per_epoch: int, micro-batches (global) used of each
                epoch; None: the full pass (with `epochs` 1 only).

        Yields (images float32 (b, H, W, C), labels int32 (b,)) with b the
        per-replica batch; each epoch's remainder is dropped."""
        if epochs > 1 and micro_steps_per_epoch is None:
            raise ValueError("train_dataset_fn over several epochs needs micro_steps_per_epoch.")

        def dataset_fn(context):
            pieces = [self._train_epoch(context, e, skip_micro_steps if e == epoch else 0, micro_steps_per_epoch)
                      for e in range(epoch, epoch + epochs)]
            ds = functools.reduce(lambda a, b: a.concatenate(b), pieces)
            return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())

        return dataset_fn

    def _train_epoch(self, context, epoch, skip_micro_steps, micro_steps):
        per_replica = context.get_per_replica_batch_size(self.micro_batch_size)
        replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
        split, _ = shard_split("train", self.info.train_examples, context.input_pipeline_id,
                               context.num_input_pipelines)
        # Python ints: one seed per (run seed, epoch, worker).
        epoch_seed = (self._seed * 1_000_003 + epoch * 7_919 + context.input_pipeline_id) % (2**31 - 1)
        buffer = IMAGENET_SHUFFLE_BUFFER if self._imagenet else SMALL_SHUFFLE_BUFFER
        ds = self._read(split, shuffle_seed=epoch_seed)
        ds = ds.shuffle(buffer, seed=epoch_seed).enumerate()
        ds = ds.skip(skip_micro_steps * replicas_here * per_replica)
        ds = ds.map(lambda i, example: preprocessing.train_example(
            self.info.name, example, tf.stack([tf.constant(epoch_seed, tf.int64), i]), self._image_size),
            num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(per_replica, drop_remainder=True)
        if micro_steps is not None:
            ds = ds.take((micro_steps - skip_micro_steps) * replicas_here)
        return ds

    def eval_dataset_fn(self):
        """The eval dataset function: each worker's slice of the eval split,
        padded to `eval_steps` steps with examples of weight 0, repeated: each
        run of `eval_steps` steps reads the split once, so one iterator serves
        every eval. Yields (images float32 (b, H, W, C), labels int32 (b,),
        weights float32 (b,)), weights 1 for real examples."""

        def dataset_fn(context):
            per_replica = context.get_per_replica_batch_size(self.micro_batch_size)
            replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
            split, count = shard_split(self.info.eval_split, self.info.eval_examples, context.input_pipeline_id,
                                       context.num_input_pipelines)
            padded = self.eval_steps * replicas_here * per_replica
            ds = self._read(split).map(lambda ex: preprocessing.eval_example(self.info.name, ex, self._image_size),
                                      num_parallel_calls=tf.data.AUTOTUNE)
            blank = (tf.zeros(self.info.input_shape, tf.float32), tf.constant(0, tf.int32), tf.constant(0.0))
            ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padded - count)).repeat()
            return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(_options())

        return dataset_fn


def _options():
    options = tf.data.Options()
    options.deterministic = True
    # No model-based autotuning: releasing an iterator waits for its
    # optimization thread, which sleeps up to a minute between rounds
    # (docs/measurements.md).
    # AUTOTUNE then means min(16, threads) parallel calls, and prefetch
    # buffers still grow on demand (tf.data's prefetch autotuner).
    options.autotune.enabled = False
    return options
