"""KerasHub's layers with adapted variables that its backbones use (its
ReversibleEmbedding is Keras's: `rules/embedding.py`). Imported (through
`registry.register_loader`, in `rules/__init__.py`) the first time
`registry.rule_for` meets a KerasHub layer, so that
importing keras_lars never imports keras_hub (nor its TensorFlow Text)."""

import keras_hub
from keras import ops

from keras_lars.per_example.kernels import conv_squared_norms
from keras_lars.per_example.registry import rule
from keras_lars.per_example.rules.embedding import ids_squared_norms

PositionEmbedding = keras_hub.layers.PositionEmbedding
ViTPatchingAndEmbedding = keras_hub.src.models.vit.vit_layers.ViTPatchingAndEmbedding
CLIPVisionEmbedding = keras_hub.src.models.clip.clip_layers.CLIPVisionEmbedding


def position_forward(layer, tap, inputs, start_index=0, positions=None):
    # The layer's own call with the tap on its (B, T, H) output: example i's
    # table gradient is d_i added to rows start..start+T-1, or to rows
    # positions_i when positions are given.
    outputs = PositionEmbedding.call(layer, inputs, start_index=start_index, positions=positions)
    return tap(outputs, () if positions is None else (ops.broadcast_to(positions, ops.shape(outputs)[:-1]),))


@rule(PositionEmbedding, forward=position_forward)
def position_squared_norms(layer, residuals, d, method):
    if residuals:
        return (ids_squared_norms(residuals[0], d),)
    d = ops.cast(d, "float32")
    return (ops.sum(ops.square(d), axis=tuple(range(1, len(d.shape)))),)


class _PatchEmbedding:
    """A ViT-style embedding layer: a Conv2D patcher (a sub-layer), an
    optional class token of its own prepended, and a position `Embedding`
    sub-layer looked up with `position_ids` of batch 1 and broadcast (so the
    sub-layer's own tap would see the batch's sum, not examples: the rule
    claims both sub-layers and taps the whole output). Example i's
    gradients: the class token gets d_i at position 0, row position_ids[p]
    of the table d_i at p, the patcher the rest."""

    def __init__(self, token):
        self.token = token  # layer -> the class token variable, or None

    def variables(self, layer):
        conv = layer.patch_embedding
        token = self.token(layer)
        return ([token] if token is not None else []) + [conv.kernel] + (
            [conv.bias] if conv.bias is not None else []) + [layer.position_embedding.embeddings]

    def forward(self, layer, tap, inputs, training=None):
        conv = layer.patch_embedding
        patches = conv.convolution_op(inputs, conv.kernel)
        if conv.data_format == "channels_first":
            patches = ops.transpose(patches, (0, 2, 3, 1))
        if conv.bias is not None:
            patches = ops.add(patches, conv.bias)
        shape = ops.shape(patches)
        embeddings = ops.reshape(patches, (shape[0], -1, shape[-1]))
        token = self.token(layer)
        if token is not None:
            token = ops.reshape(ops.cast(token, embeddings.dtype), (1, 1, -1))
            embeddings = ops.concatenate([ops.tile(token, (shape[0], 1, 1)), embeddings], axis=1)
        positions = ops.take(layer.position_embedding.embeddings, layer.position_ids, axis=0)
        # The ids go with the residuals: the backward pass reads no variable.
        ids = ops.broadcast_to(ops.convert_to_tensor(layer.position_ids), ops.shape(embeddings)[:2])
        return tap(ops.add(embeddings, ops.cast(positions, embeddings.dtype)), (inputs, ids))

    def squared_norms(self, layer, residuals, d, method):
        inputs, ids = residuals
        d = ops.cast(d, "float32")
        norms = []
        if self.token(layer) is not None:
            norms.append(ops.sum(ops.square(d[:, 0, :]), axis=-1))
            patch_d = d[:, 1:, :]
        else:
            patch_d = d
        conv = layer.patch_embedding
        if conv.data_format == "channels_first":
            inputs = ops.transpose(inputs, (0, 2, 3, 1))
        grid = [(n - k) // s + 1 for n, k, s in zip(inputs.shape[1:3], conv.kernel_size, conv.strides)]
        kernel, bias = conv_squared_norms(inputs, ops.reshape(patch_d, (-1, *grid, patch_d.shape[-1])),
                                          conv.kernel_size, conv.strides, conv.dilation_rate, conv.padding, 1, method)
        norms += [kernel] + ([bias] if conv.bias is not None else [])
        # Row position_ids[p] gets d at p (CLIP's ids are a variable, maybe repeated).
        norms.append(ids_squared_norms(ids, d))
        return tuple(norms)


def _register_patch_embedding(layer_class, token):
    patch = _PatchEmbedding(token)
    rule(layer_class, forward=patch.forward, variables=patch.variables)(patch.squared_norms)


_register_patch_embedding(ViTPatchingAndEmbedding, lambda layer: layer.class_token if layer.use_class_token else None)
_register_patch_embedding(CLIPVisionEmbedding, lambda layer: layer.class_embedding)
