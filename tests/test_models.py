"""The model library: every registered family, at its tiny preset, runs forward and backward."""

import dataclasses
import typing

import pytest
import torch

from models import DataSpec, build_model, list_models, register_model
from models.registry import get_entry, make_config
from pipeline.params.models import ModelParams

SPEC = DataSpec(input_shape=(1, 8, 8), num_classes=10)
PREDICTIVE = {"mlp", "cnn", "rnn", "transformer"}
# sequence-to-sequence models read token ids: 12 source tokens, 9 target tokens, 6 steps
PAIRS = DataSpec(input_shape=(12,), num_classes=9, vocab_size=20, horizon=6)


def spec_and_inputs(name: str, n: int):
    if name == "seq2seq":
        return PAIRS, torch.randint(0, 20, (n, 12))
    return SPEC, torch.randn(n, *SPEC.input_shape)


def _outputs_sum(out) -> torch.Tensor:
    return sum(o.float().sum() for o in (out if isinstance(out, tuple) else (out,)))


@pytest.mark.parametrize("name", list_models())
def test_tiny_model_forward_and_backward(name):
    torch.manual_seed(0)
    spec, x = spec_and_inputs(name, 5)
    model = build_model(name, get_entry(name).config_cls.tiny(), spec)
    if name == "seq2seq":  # teacher forcing: the target so far in, logits out
        out = model(x, torch.randint(0, 9, (5, 6)))
        assert out.shape == (5, 6, PAIRS.num_classes)
    else:
        out = model(x)
    if name in PREDICTIVE:
        assert out.shape == (5, SPEC.num_classes)
    _outputs_sum(out).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_models())
def test_default_model_builds_from_a_plain_mapping(name):
    fields = {f.name: f.default for f in dataclasses.fields(get_entry(name).config_cls)}
    as_yaml = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    spec, x = spec_and_inputs(name, 2)
    model = build_model(name, as_yaml, spec).eval()
    out = model(x)
    assert torch.isfinite(_outputs_sum(out))


@pytest.mark.parametrize("name", ["vae", "gan", "diffusion"])
def test_generative_models_sample_images(name):
    model = build_model(name, get_entry(name).config_cls.tiny(), SPEC).eval()
    samples = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, *SPEC.input_shape)
    low = 0.0 if name == "vae" else -1.0
    assert samples.min() >= low and samples.max() <= 1.0


def test_rnn_reads_images_as_rows_sequences_and_tokens():
    rnn = build_model("rnn", {"cell": "gru", "hidden_size": 8, "bidirectional": True}, SPEC)
    assert rnn(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    series = build_model("rnn", {"hidden_size": 8}, DataSpec((24, 1), horizon=3))
    assert series(torch.randn(4, 24, 1)).shape == (4, 3)
    text = build_model("rnn", {"hidden_size": 8}, DataSpec((12,), num_classes=2, vocab_size=50))
    assert text(torch.randint(0, 50, (4, 12))).shape == (4, 2)


def test_transformer_reads_rows_patches_sequences_and_padded_tokens():
    torch.manual_seed(0)
    rows = build_model("transformer", {"d_model": 16, "heads": 2}, SPEC)
    assert rows(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    patches = build_model("transformer", {"d_model": 16, "patch_size": 4}, DataSpec((3, 8, 8), 4))
    assert patches(torch.randn(3, 3, 8, 8)).shape == (3, 4)
    assert patches.attention_maps(torch.randn(2, 3, 8, 8)).shape == (2, 2, 4, 4)  # 2x2 patches
    with pytest.raises(ValueError, match="patch_size 3 must divide the image size 8x8"):
        build_model("transformer", {"patch_size": 3}, SPEC)
    with pytest.raises(ValueError, match="d_model 10 must be a multiple of heads 4"):
        build_model("transformer", {"d_model": 10, "heads": 4}, SPEC)
    series = build_model("transformer", {"positions": "sinusoidal"}, DataSpec((24, 1), horizon=3))
    assert series(torch.randn(4, 24, 1)).shape == (4, 3)

    text = build_model("transformer", {}, DataSpec((12,), num_classes=2, vocab_size=50)).eval()
    x = torch.randint(1, 50, (3, 12))
    x[0, 6:] = 0  # padding
    x[2] = 0  # an empty text
    out = text(x)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    # no weight goes to padding
    weights = text.attention_maps(x)[0, 0]
    assert torch.allclose(weights[:, 6:], torch.zeros(12, 6))


def test_causal_transformer_never_looks_ahead():
    spec = DataSpec((16,), num_classes=30, vocab_size=30, per_step=True)
    lm = build_model("transformer", {"d_model": 16, "heads": 2}, spec).eval()
    x = torch.randint(1, 30, (2, 16))
    later = x.clone()
    later[:, 10:] = 5  # only tokens from step 10 on differ
    out, out_later = lm(x), lm(later)
    assert out.shape == (2, 16, 30)
    assert torch.allclose(out[:, :10], out_later[:, :10], atol=1e-5)
    assert not torch.allclose(out[:, 10:], out_later[:, 10:])
    maps = lm.attention_maps(x)
    assert torch.allclose(maps[0].triu(1), torch.zeros(2, 16, 16))  # no weight on the future
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 16))


def _schema_classes():
    union = typing.get_args(ModelParams)[0]
    return {
        typing.get_args(cls.model_fields["name"].annotation)[0]: cls
        for cls in typing.get_args(union)
    }


def test_params_schema_matches_the_registry():
    """Every registered family is accepted in params.yaml, with the same keys and defaults."""
    schema = _schema_classes()
    assert sorted(schema) == list_models()
    for name, cls in schema.items():
        dc_fields = {f.name: f.default for f in dataclasses.fields(get_entry(name).config_cls)}
        schema_fields = {k: f.default for k, f in cls.model_fields.items() if k != "name"}
        assert schema_fields == dc_fields, name


def test_residual_cnn_and_other_activations():
    model = build_model("cnn", {"channels": (4, 6), "residual": True, "activation": "gelu"}, SPEC)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        build_model("mlp", {"activation": "swishy"}, SPEC)


def test_registry_rejects_duplicates_and_names_known_models():
    with pytest.raises(ValueError, match="'mlp' is already registered"):
        register_model("mlp", get_entry("mlp").config_cls)(lambda **kw: None)
    with pytest.raises(KeyError, match="unknown model 'resnet'; known models: cnn, diffusion"):
        build_model("resnet", {}, SPEC)
    with pytest.raises(TypeError):
        make_config("mlp", {"no_such_field": 1})


def test_pretrained_loads_local_weights_and_freezes_the_backbone(tmp_path):
    import torchvision.models as tvm

    source = tvm.mobilenet_v3_small(weights=None)
    weights = tmp_path / "mobilenet.pth"
    torch.save(source.state_dict(), weights)
    cfg = {"backbone": "mobilenet_v3_small", "weights": str(weights), "freeze_backbone": True}
    model = build_model("pretrained", cfg, SPEC)
    first = next(iter(source.state_dict()))
    torch.testing.assert_close(model.backbone.state_dict()[first], source.state_dict()[first])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.classifier.3.weight", "backbone.classifier.3.bias"}
    assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_vgg16_gets_a_new_head_and_says_where_its_imagenet_file_goes(tmp_path, monkeypatch):
    model = build_model("pretrained", {"backbone": "vgg16", "freeze_backbone": True}, SPEC)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.classifier.6.weight", "backbone.classifier.6.bias"}
    assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not found at .*hub/checkpoints/vgg16-"):
        build_model("pretrained", {"backbone": "vgg16", "weights": "imagenet"}, SPEC)


def test_pretrained_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"not found at .*hub/checkpoints/resnet18-"):
        build_model("pretrained", {"backbone": "resnet18", "weights": "imagenet"}, SPEC)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded at run time"):
        build_model("pretrained", {"weights": str(tmp_path / "missing.pth")}, SPEC)


def test_weight_init_schemes():
    from models.layers import init_weights

    for scheme in ("kaiming", "xavier", "orthogonal"):
        model = build_model("mlp", {"hidden_sizes": (16,), "batch_norm": False}, SPEC)
        init_weights(model, scheme)
        linear = model.net[1]
        assert torch.count_nonzero(linear.bias) == 0 and linear.weight.std() > 0
    with pytest.raises(ValueError, match="unknown init 'zeros'"):
        init_weights(model, "zeros")


def test_mlp_learns_xor():
    """The sanity check everyone knows: 4 points, not linearly separable, learned to 100 %."""
    from pipeline import engine
    from pipeline.params.training import TrainParams
    from pipeline.tasks.predictive import Classification

    torch.manual_seed(0)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    model = build_model(
        "mlp",
        {"hidden_sizes": (8,), "activation": "tanh", "dropout": 0.0, "batch_norm": False},
        DataSpec((2,), 2),
    )
    cfg = TrainParams.model_validate(
        {
            "epochs": 300,
            "batch_size": 4,
            "optimizer": {"lr": 0.05},
            "scheduler": {"name": "none"},
            "grad_clip": None,
            "early_stopping": {"patience": 0},
        }
    )
    batches = engine.Batches(x, y, 4, device="cpu", shuffle=True)
    task = Classification(cfg, {"class_counts": {"train": [2, 2]}})
    engine.fit(model, batches, batches, cfg, task)
    assert (model.eval()(x).argmax(1) == y).all()


def test_declared_choices_are_the_ones_the_model_code_builds():
    """models/configs.py names the activations and backbones params.yaml may choose; the
    torch side has a builder for each and no other."""
    from models.configs import Activation, PretrainedConfig
    from models.layers import ACTIVATIONS
    from models.pretrained import BACKBONES

    assert set(typing.get_args(Activation)) == set(ACTIVATIONS)
    backbone = typing.get_type_hints(PretrainedConfig, include_extras=True)["backbone"]
    assert set(typing.get_args(backbone)) == set(BACKBONES)


def test_conditional_vae_samples_the_classes_asked_for_and_needs_labels():
    torch.manual_seed(0)
    cvae = build_model("vae", {"latent_dim": 2, "channels": [4, 4], "conditional": True}, SPEC)
    assert cvae.random_labels(12).tolist() == [i % 10 for i in range(12)]
    x = torch.rand(5, 1, 8, 8)
    labels = torch.arange(5)
    out = cvae.loss(x, labels)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="a conditional VAE needs the class labels"):
        cvae.encode(x)
    torch.manual_seed(1)
    unlabelled = cvae(x)[0]
    torch.manual_seed(1)
    assert torch.equal(unlabelled, cvae(x, torch.zeros(5, dtype=torch.long))[0])  # class 0
    z = torch.zeros(2, 2)
    a, b = cvae.decode(z, torch.tensor([3, 7])).unbind(0)
    assert not torch.allclose(a, b)  # the same latent, another class: another image
    assert cvae.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    plain = build_model("vae", {"latent_dim": 2, "channels": [4, 4]}, SPEC)
    assert plain.random_labels(4) is None and plain.loss(x, labels)["loss"].isfinite()


@pytest.mark.parametrize(
    "config",
    [
        {"architecture": "gru", "attention": "additive"},
        {"architecture": "lstm", "attention": "dot"},
        {"architecture": "transformer"},
    ],
)
def test_seq2seq_decodes_greedily_and_by_beam_search(config):
    torch.manual_seed(0)
    model = build_model("seq2seq", {**config, "hidden_size": 16, "heads": 2}, PAIRS).eval()
    src = torch.randint(1, 20, (4, 12))
    src[0, 5:] = 0  # padding
    src[1] = 0  # an empty source
    greedy = model(src)
    assert greedy.shape == (4, PAIRS.horizon) and greedy.dtype == torch.long
    # a beam of one is greedy decoding; a wider beam finds a sequence at least as likely
    assert torch.equal(model.beam_search(src, 1), greedy)
    beam = model.beam_search(src, 4)
    assert beam.shape == (4, PAIRS.horizon)

    def log_prob(ids):  # of the tokens up to and including the first EOS
        bos = torch.full((len(ids), 1), 2)
        logits = model(src, torch.cat([bos, ids[:, :-1]], 1)).log_softmax(-1)
        logits[:, :, [0, 2]] = float("-inf")  # decoding never writes padding or BOS
        picked = logits.log_softmax(-1).gather(2, ids[:, :, None])[:, :, 0]
        real = torch.cumsum(torch.cumsum((ids == 3).long(), 1), 1) <= 1  # through EOS
        return torch.where(real, picked, 0.0).sum(1)

    assert (log_prob(beam) >= log_prob(greedy) - 1e-4).all()
    weights = model.alignment(src, torch.full((4, 3), 4))
    assert weights.shape == (4, 3, 12)
    assert torch.allclose(weights.sum(-1), torch.ones(4, 3), atol=1e-5)
    assert weights[0, :, 5:].abs().max() < 1e-6  # no attention on padding
