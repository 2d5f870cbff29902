"""Model backends: the real-valued RoPE equals SAM2's complex one; torch.export of the image
encoder (static batch) and of the memory attention (real RoPE) reproduces eager SAM2 with no
complex tensors in the graphs (what TensorRT needs, checked on the CPU); the bucketed encoder
pads and slices exactly; backend selection fails clearly where it cannot run."""

from __future__ import annotations

import copy

import pytest
import torch

from checks import AGREEMENT, assert_agreement, assert_error_ratio, assert_max_abs, label_agreement
from sam2vss.backends import (
    BucketedEncoder,
    EncoderOutputs,
    _real_rope_forward,
    apply_backend,
    export_check,
    outputs_to_dict,
)
from sam2vss.config import RefineConfig
from sam2vss.model import ModelConfig, build

MODEL = ModelConfig(image_size=256)
# Float32 attention on the same inputs: the rotation's rounding (complex vs real products) and
# nothing else; eager SAM2 against itself on a reordered batch differs by about this much too.
ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return build(MODEL)


@pytest.mark.parametrize("which", ["self_attn", "cross_attn_image"])
def test_real_rope_equals_sams_complex_rope(model, which):
    attn = getattr(model.memory_attention.layers[0], which)
    g = torch.Generator().manual_seed(1)
    n, c = 16 * 16, attn.embedding_dim
    q = torch.randn(3, n, c, generator=g)
    ptr = 4 if which == "cross_attn_image" else 0
    kv_dim = attn.kv_in_dim
    k_len = 2 * n + ptr if which == "cross_attn_image" else n
    k = torch.randn(3, k_len, kv_dim, generator=g)
    v = torch.randn(3, k_len, kv_dim, generator=g)
    kwargs = {"num_k_exclude_rope": ptr} if ptr else {}
    attn64 = copy.deepcopy(attn).double()  # float64 compute (freqs_cis stays complex64)
    with torch.no_grad():
        theirs = attn(q, k.clone(), v, **kwargs)
        ours = _real_rope_forward(attn, q, k.clone(), v, **kwargs)
        ref = attn64(q.double(), k.double(), v.double(), **kwargs)
    assert_max_abs(ours, theirs, atol=ATOL, what=f"{which}: real vs complex RoPE")
    assert_error_ratio(ours, low=theirs, ref=ref, k=2, what=f"{which}: real RoPE vs float64 SAM2")


def test_export_reproduces_eager_without_complex_tensors(model):
    report = export_check(model)
    print(report)
    assert report["encoder_complex_nodes"] == [] and report["memory_attention_complex_nodes"] == []
    assert report["encoder_max_abs"] <= ATOL
    assert report["memory_attention_max_abs"] <= ATOL


def test_bucketed_encoder_pads_and_slices(model):
    flat = EncoderOutputs(model.image_encoder)
    bucketed = BucketedEncoder({1: flat, 4: flat})
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = bucketed(x)
        want = outputs_to_dict(flat(x))
        one = bucketed(x[:1])
    for key in ("vision_features",):
        assert got[key].shape == want[key].shape
        assert_max_abs(got[key], want[key], atol=ATOL, what=f"bucketed {key}")
    assert [t.shape[0] for t in got["backbone_fpn"]] == [3, 3, 3]
    assert one["vision_features"].shape[0] == 1
    with pytest.raises(ValueError, match="largest bucket"):
        BucketedEncoder({1: flat})(x)


def test_backend_selection_errors(model):
    with pytest.raises(ValueError, match="expected one of"):
        apply_backend(model, "onnx")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            apply_backend(model, "tensorrt")
    with pytest.raises(ValueError, match="backend must be one of"):
        RefineConfig(backend="onnx")


@pytest.mark.slow
def test_inductor_backend_agrees_with_eager(tmp_path):
    """torch.compile of the encoder and memory attention (60-120 s of compiling on 2 cores)."""
    from sam2vss.config import SynthConfig
    from sam2vss.data import open_dataset
    from sam2vss.refine import dataset_jobs, refine_jobs
    from sam2vss.synth import synthesize

    root = synthesize(
        tmp_path / "ds",
        SynthConfig(videos=1, frames=4, height=64, width=96, objects=4, train_videos=0, seed=2),
        progress=False,
    )
    (job,) = dataset_jobs(open_dataset(root), root / "pred_base", "val")
    for backend in ("eager", "inductor"):
        cfg = RefineConfig(masks="instances", window=4, backend=backend, pipeline="fast")
        refine_jobs([job], tmp_path / backend, cfg, MODEL, progress=False)
    share, _ = label_agreement(tmp_path / "inductor", tmp_path / "eager", "inductor vs eager")
    assert_agreement(share, AGREEMENT, "inductor vs eager")


@pytest.mark.tensorrt
def test_tensorrt_encoder_agrees_with_eager(tmp_path, monkeypatch):
    """Builds the TensorRT encoder engines (bf16) and compares their features with eager's."""
    from sam2vss import envs

    monkeypatch.setattr(envs, "SAM2VSS_CACHE", str(tmp_path))
    cfg = ModelConfig(image_size=256, device="cuda")
    eager, trt = build(cfg), build(cfg)
    apply_backend(trt, "tensorrt", cfg, encode_batch=4)
    x = torch.randn(3, 3, 256, 256, device="cuda")
    with torch.no_grad():
        want, got = eager.forward_image(x), trt.forward_image(x)
    err = float((want["vision_features"] - got["vision_features"]).abs().max())
    print(f"TensorRT vs eager encoder max |diff| {err:.3e}")
    assert err <= 0.05  # bf16 engine against fp32 eager
    assert list(tmp_path.glob("encoder_*.ep"))


def test_complex_rope_is_detected_in_sams_own_graph(model):
    """The check can fail: SAM2's own RoPE attention exports with complex tensors."""
    from sam2vss.backends import complex_nodes

    attn = model.memory_attention.layers[0].self_attn
    x = torch.randn(2, 256, attn.embedding_dim)
    with torch.no_grad():
        ep = torch.export.export(attn.eval(), (x, x, x))
    assert complex_nodes(ep)


def test_engine_key_follows_the_exported_model(model):
    """TensorRT engines are keyed by the model actually exported: the faster presets' smaller
    tracker, a bf16 model and the bucket each get their own file; no model config is fine."""
    from copy import deepcopy

    from sam2vss.backends import engine_key

    small = build(ModelConfig(image_size=192))
    bf16 = deepcopy(model).to(torch.bfloat16)
    keys = {
        engine_key(model, MODEL, 8, versions={}),
        engine_key(small, MODEL, 8, versions={}),  # same config, the tracker exported at 192
        engine_key(bf16, MODEL, 8, versions={}),
        engine_key(model, MODEL, 1, versions={}),
    }
    assert len(keys) == 4
    assert engine_key(model, None, 8, versions={}) == engine_key(model, MODEL, 8, versions={})
