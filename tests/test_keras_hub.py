"""CLARS on KerasHub's backbones, one per family, built from a config (random
weights, one layer, no download): per-example norms of every variable CLARS
adapts against brute force (each example through its own autodiff pass),
then one finite `fit` step. `make test-keras-hub` runs every family on
TensorFlow, JAX and PyTorch; `make test` runs the four marked for it (the
others carry the `keras_hub_all` marker) on TensorFlow."""

import time

import keras
import numpy as np
import pytest

import keras_lars
from backends import gradients

keras_hub = pytest.importorskip("keras_hub")
M = keras_hub.models
B, T, V, H = 3, 6, 40, 8
# Moonshine's stem (strides 64, 3, 2; kernels 127, 7, 3) leaves 3 frames of these.
AUDIO_SAMPLES = 64 * 26 + 127


TEXT = dict(vocabulary_size=V, num_layers=1, hidden_dim=H, intermediate_dim=16)
DECODER = dict(TEXT, num_query_heads=2, num_key_value_heads=1)
FAMILIES = {
    # name: (backbone builder, route: "rules" or "vectorized", in make test)
    "albert": (lambda: M.AlbertBackbone(**TEXT, num_heads=2, embedding_dim=4, num_groups=1, num_inner_repetitions=1,
                                        max_sequence_length=T), "rules", False),
    "bert": (lambda: M.BertBackbone(**TEXT, num_heads=2, max_sequence_length=T), "rules", True),
    "bloom": (lambda: M.BloomBackbone(**TEXT, num_heads=2), "rules", False),
    "distil_bert": (lambda: M.DistilBertBackbone(**TEXT, num_heads=2, max_sequence_length=T), "rules", False),
    "electra": (lambda: M.ElectraBackbone(vocab_size=V, num_layers=1, num_heads=2, hidden_dim=H, embedding_dim=4,
                                          intermediate_dim=16, max_sequence_length=T), "rules", False),
    "f_net": (lambda: M.FNetBackbone(**TEXT, max_sequence_length=T), "rules", False),
    "falcon": (lambda: M.FalconBackbone(**TEXT, num_attention_heads=2), "rules", False),
    "gemma": (lambda: M.GemmaBackbone(**DECODER, head_dim=4), "rules", False),
    "gpt2": (lambda: M.GPT2Backbone(**TEXT, num_heads=2, max_sequence_length=T), "rules", True),
    "gpt_neo_x": (lambda: M.GPTNeoXBackbone(**TEXT, num_heads=2, max_sequence_length=T, rotary_percentage=0.5),
                  "rules", False),
    "llama": (lambda: M.LlamaBackbone(**DECODER), "rules", True),
    "mistral": (lambda: M.MistralBackbone(**DECODER), "rules", False),
    "opt": (lambda: M.OPTBackbone(**TEXT, num_heads=2, max_sequence_length=T), "rules", False),
    "qwen": (lambda: M.QwenBackbone(**DECODER), "rules", False),
    "roberta": (lambda: M.RobertaBackbone(**TEXT, num_heads=2, max_sequence_length=T), "rules", False),
    "vit": (lambda: M.ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=H,
                                  mlp_dim=16), "rules", True),
    "clip_vision": (lambda: M.CLIPVisionEncoder(patch_size=4, hidden_dim=H, num_layers=1, num_heads=2,
                                                intermediate_dim=16, image_shape=(8, 8, 3)), "rules", False),
    "whisper": (lambda: M.WhisperBackbone(vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=H, intermediate_dim=16,
                                          num_mels=4, max_encoder_sequence_length=2 * T,
                                          max_decoder_sequence_length=T), "rules", False),
    "moonshine": (lambda: M.MoonshineBackbone(vocabulary_size=V, filter_dim=H, encoder_num_layers=1,
                                              decoder_num_layers=1, hidden_dim=H, intermediate_dim=16,
                                              encoder_num_heads=2, decoder_num_heads=2), "rules", False),
    "deit": (lambda: M.DeiTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=H,
                                    intermediate_dim=16), "vectorized", False),
}


def _data(backbone):
    """One batch for `backbone`'s inputs: token ids with repeats and a
    padding mask with padding, or images."""
    rng = np.random.default_rng(0)
    spec = backbone.input
    if not isinstance(spec, dict):
        return rng.normal(size=(B,) + tuple(spec.shape[1:])).astype("float32")
    x = {}
    for name, tensor in spec.items():
        if name == "encoder_features":  # Whisper: (batch, 2T frames, mel bins)
            x[name] = rng.normal(size=(B, 2 * T, tensor.shape[-1])).astype("float32")
        elif name == "encoder_input_values":  # Moonshine: raw audio, (batch, samples, 1)
            x[name] = rng.normal(size=(B, AUDIO_SAMPLES, 1)).astype("float32")
        elif name == "encoder_padding_mask":
            x[name] = np.ones((B, AUDIO_SAMPLES), "int32")
            x[name][1, -200:] = 0
        elif name in ("padding_mask", "decoder_padding_mask"):
            x[name] = np.array([[1] * T, [1] * (T - 2) + [0, 0], [1] * (T - 1) + [0]], "int32")
        elif name == "segment_ids":
            x[name] = np.array([[0] * 3 + [1] * (T - 3)] * B, "int32")
        elif name == "images":
            x[name] = rng.normal(size=(B,) + tuple(tensor.shape[1:])).astype("float32")
        else:
            x[name] = rng.integers(0, 5, size=(B, T)).astype("int32")  # few ids: repeats within an example
    return x


def _model(name):
    keras.utils.set_random_seed(0)
    backbone = FAMILIES[name][0]()
    out = backbone.output
    if isinstance(out, dict):  # encoder-decoders (audio): the decoder's sequence
        out = out.get("sequence_output", out.get("decoder_sequence_output"))
    sequence = out
    pooled = keras.layers.GlobalAveragePooling1D()(sequence) if len(sequence.shape) == 3 else sequence
    model = keras.Model(backbone.input, keras.layers.Dense(3, name="clars_head")(pooled))
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=_loss())
    return model, _data(backbone)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _example(x, i):
    return keras.tree.map_structure(lambda t: t[i : i + 1], x)


def _brute_force_mean_norms(model, x, y, variables):
    per_example = [
        gradients(model, lambda i=i: _loss()(y[i : i + 1], model(_example(x, i), training=False)), variables)
        for i in range(B)
    ]
    return np.mean([[np.linalg.norm(g) for g in example] for example in per_example], axis=0)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[] if FAMILIES[name][2] else [pytest.mark.keras_hub_all]) for name in sorted(FAMILIES)
])
def test_backbone_norms_are_exact_and_clars_steps(name):
    model, x = _model(name)
    y = np.array([0, 1, 2])
    options = {"unsupported_layers": "vectorized"} if FAMILIES[name][1] == "vectorized" else {}
    if FAMILIES[name][1] == "vectorized":
        with pytest.raises(ValueError, match="Per-example gradient norms are implemented for"):
            keras_lars.attach_per_example_norms(model)
    variables = [v for v, adapt in zip(model.trainable_variables, model.optimizer.adapts(model.trainable_variables))
                 if adapt]
    # Inference mode: dropout would draw other masks in the brute force.
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, training=False, **options)
    expected = _brute_force_mean_norms(model, x, y, variables)
    # atol: float32's resolution at the model's largest norm, for variables
    # whose exact gradient is 0 (e.g. a key projection's share of a softmax
    # shift) and whose computed norms are rounding noise either way.
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5, atol=1e-6 * max(expected))
    keras_lars.attach_per_example_norms(model, **options)
    history = model.fit(x, y, batch_size=B, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("name", ["gpt2", "llama", pytest.param("gemma", marks=pytest.mark.keras_hub_all)])
def test_causal_lm_head_on_the_token_embedding_is_exact(name):
    """A causal LM as KerasHub's `*CausalLM` builds it: the backbone's token
    embedding looked up on the way in and called with `reverse=True` as the
    output head (GPT-2 and Gemma tie the table: one layer, two calls; Llama
    has its own reverse matrix)."""
    keras.utils.set_random_seed(0)
    backbone = FAMILIES[name][0]()
    logits = backbone.token_embedding(backbone.output, reverse=True)
    model = keras.Model(backbone.input, logits)
    model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=_loss())
    x = _data(backbone)
    y = np.roll(x["token_ids"], -1, axis=1)
    variables = [v for v, adapt in zip(model.trainable_variables, model.optimizer.adapts(model.trainable_variables))
                 if adapt]
    norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, _loss(), variables, training=False)
    expected = _brute_force_mean_norms(model, x, y, variables)
    np.testing.assert_allclose([float(n) for n in norms], expected, rtol=1e-5, atol=1e-6 * max(expected))
    keras_lars.attach_per_example_norms(model)
    assert np.isfinite(model.fit(x, y, batch_size=B, epochs=1, verbose=0).history["loss"][0])
