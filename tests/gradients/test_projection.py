"""gs.gradients.projection against TRAK's projectors called directly and against inner-product statistics in numpy."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import torch
from trak.projectors import BasicProjector, ProjectionType

from gs.gradients.projection import GPU_BLOCK_BYTES, Projector, basic_block_size, load_projector, projector_dtype
from gs.io import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trak_basic(d: int, p: int, seed: int, x: torch.Tensor) -> np.ndarray:
    """The reference: TRAK's BasicProjector as LESS builds it (block_size 128, model_id 0), on the CPU."""
    ref = BasicProjector(d, p, seed, ProjectionType.rademacher, torch.device("cpu"), block_size=128)
    return ref.project(x, model_id=0).numpy()


@pytest.mark.parametrize(("d", "p", "seed"), [(3000, 300, 0), (2500, 128, 7), (1000, 64, 3)])
def test_rademacher_equals_trak_basic_projector_kept_or_regenerated(d, p, seed):
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    expected = _trak_basic(d, p, seed, x)
    kept = Projector("rademacher", d, p, seed, device="cpu")
    regenerated = Projector("rademacher", d, p, seed, device="cpu", cache_limit_bytes=0)
    assert kept.backend == regenerated.backend == "basic"
    assert kept._trak.blocks is not None and regenerated._trak.blocks is None
    scale = np.abs(expected).max()
    for proj in (kept, regenerated):
        out = proj.transform(x)
        assert out.shape == (5, p) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-5 * scale)
    # numpy input, and a different seed gives a different matrix
    np.testing.assert_allclose(kept.transform(x.numpy()), expected, atol=1e-5 * scale)
    other = Projector("rademacher", d, p, seed + 1, device="cpu").transform(x)
    assert not np.allclose(other, expected, atol=1e-2 * scale)


def test_kept_matrix_is_a_balanced_sign_matrix():
    proj = Projector("rademacher", 4000, 200, 0, device="cpu")
    blocks = proj._trak.blocks.numpy()  # (2, 4000, 128); the last block's unused columns stay 0
    used = np.concatenate([blocks[0], blocks[1][:, :72]], axis=1)
    assert set(np.unique(used)) == {-1, 1}
    assert abs((used == 1).mean() - 0.5) < 0.01
    assert not blocks[1][:, 72:].any()


def test_save_and_load_regenerate_the_same_projection(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 900)).astype(np.float32)
    for kind in ("rademacher", "sparse", "gaussian"):
        proj = Projector(kind, 900, 40, 5)
        proj.save(tmp_path / f"{kind}.joblib")
        loaded = load_projector(tmp_path / f"{kind}.joblib")
        assert loaded.kind == kind and loaded.backend == proj.backend
        np.testing.assert_array_equal(loaded.transform(x), proj.transform(x))
    # a spec saved before the rademacher kind existed (no backend, no device) still loads
    joblib.dump({"kind": "sparse", "d": 900, "dim": 40, "seed": 5}, tmp_path / "old.joblib")
    np.testing.assert_array_equal(
        load_projector(tmp_path / "old.joblib").transform(x), Projector("sparse", 900, 40, 5).transform(x)
    )


def test_gpu_fallback_block_fits_the_budget_and_is_saved(tmp_path):
    # Paper scale: Llama-3.1-8B, LoRA r=128 on q/k/v/o: 32 layers x 128 x (8192 + 5120 + 5120 + 8192) = 109,051,904.
    d = 109_051_904
    assert GPU_BLOCK_BYTES == 4 * 2**30
    assert basic_block_size(d, 8192, "cuda") == 9  # floor(4 GiB / (4 B x 109,051,904)) = floor(9.85)
    assert basic_block_size(d, 8192, "cpu") == 128  # LESS's block off the GPU
    assert basic_block_size(1000, 64, "cuda") == 64 and basic_block_size(1000, 8192, "cuda") == 128
    with pytest.raises(InputError, match="GPU_BLOCK_BYTES"):
        basic_block_size(2**30 + 1, 8192, "cuda")  # one float32 column: 4 GiB + 4 bytes
    assert basic_block_size(2**30, 8192, "cuda") == 1  # exactly 4 GiB: one column
    # A chosen block fixes TRAK's seeds (seed + 1000 * block): equal to BasicProjector(block_size=8), not 128,
    # and a saved projector reloads with its block.
    d, p, seed = 2000, 40, 3
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(0))
    ref = BasicProjector(d, p, seed, ProjectionType.rademacher, torch.device("cpu"), block_size=8)
    expected = ref.project(x, model_id=0).numpy()
    proj = Projector("rademacher", d, p, seed, device="cpu", block_size=8)
    np.testing.assert_allclose(proj.transform(x), expected, atol=1e-5 * np.abs(expected).max())
    assert not np.allclose(Projector("rademacher", d, p, seed, device="cpu").transform(x), expected, atol=1e-2)
    proj.save(tmp_path / "b8.joblib")
    assert joblib.load(tmp_path / "b8.joblib")["block_size"] == 8
    np.testing.assert_array_equal(load_projector(tmp_path / "b8.joblib").transform(x), proj.transform(x))
    # a rademacher spec saved before the block was chosen used LESS's 128
    joblib.dump(
        {"kind": "rademacher", "d": d, "dim": p, "seed": seed, "backend": "basic", "device": "cpu"},
        tmp_path / "o.joblib",
    )
    np.testing.assert_allclose(
        load_projector(tmp_path / "o.joblib").transform(x), _trak_basic(d, p, seed, x), atol=1e-3
    )


def test_gpu_block_follows_the_projector_dtype():
    d = 109_051_904  # paper scale, as above
    # bfloat16 (LESS: the model's dtype): floor(4 GiB / (2 B x 109,051,904)) = floor(19.69) = 19 columns.
    assert basic_block_size(d, 8192, "cuda", torch.bfloat16) == 19
    assert basic_block_size(d, 8192, "cuda", torch.float32) == 9
    # LESS's 128 where a (d, 128) block fits: 2 B x 16,000,000 x 128 = 4.1e9 B < 4 GiB = 4.29e9 B.
    assert basic_block_size(16_000_000, 8192, "cuda", torch.bfloat16) == 128
    assert basic_block_size(17_000_000, 8192, "cuda", torch.bfloat16) == 126  # floor(4294967296 / 34e6)
    assert basic_block_size(d, 8192, "cpu", torch.bfloat16) == 128
    assert basic_block_size(2**31, 8192, "cuda", torch.bfloat16) == 1  # one bf16 column of exactly 4 GiB
    with pytest.raises(InputError, match="GPU_BLOCK_BYTES"):
        basic_block_size(2**31 + 1, 8192, "cuda", torch.bfloat16)


def test_projector_dtype_is_the_models_on_a_gpu_float32_on_the_cpu():
    assert projector_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    assert projector_dtype(torch.bfloat16, torch.device("cuda", 0)) == torch.bfloat16
    assert projector_dtype(torch.bfloat16, "cpu") == torch.float32
    assert projector_dtype(torch.float32, "cuda") == torch.float32


def test_bfloat16_projector_equals_trak_basic_projector_in_bfloat16(tmp_path):
    d, p, seed = 3000, 50, 4
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(1))
    # The reference: TRAK's BasicProjector as LESS builds it on a bf16 model (dtype = the model's), block 16.
    ref = BasicProjector(
        d, p, seed, ProjectionType.rademacher, torch.device("cpu"), block_size=16, dtype=torch.bfloat16
    )
    expected = ref.project(x.to(torch.bfloat16), model_id=0).float().numpy()
    proj = Projector("rademacher", d, p, seed, device="cpu", block_size=16, dtype="bfloat16")
    assert proj._trak.blocks is None  # only a float32 projector keeps the int8 matrix
    out = proj.transform(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # The same signs as the float32 draw on the CPU: bf16 differs only by rounding (8-bit mantissa).
    f32 = Projector("rademacher", d, p, seed, device="cpu", block_size=16).transform(x)
    assert np.abs(out - f32).max() < 2e-2 * np.abs(f32).max()
    assert not np.array_equal(out, f32)
    proj.save(tmp_path / "bf16.joblib")
    assert joblib.load(tmp_path / "bf16.joblib")["dtype"] == "bfloat16"
    np.testing.assert_array_equal(load_projector(tmp_path / "bf16.joblib").transform(x), out)
    with pytest.raises(InputError, match="dtype"):
        Projector("rademacher", d, p, seed, device="cpu", dtype="int8")


def _standardised_errors(x: np.ndarray, proj: Projector, sparse_s: float | None = None) -> np.ndarray:
    """(<Px, Py>/p - <x, y>) / sd over all pairs, sd from the known variance of each random matrix."""
    p = proj.dim
    y = proj.transform(x).astype(np.float64)
    est = y @ y.T / (p if sparse_s is None else 1.0)  # sklearn's sparse matrix is already scaled by 1/sqrt(p)
    gram = x.astype(np.float64) @ x.T.astype(np.float64)
    sq = np.square(x.astype(np.float64))
    norms2 = np.diag(gram)
    cross4 = sq @ sq.T  # sum_k x_ik^2 x_jk^2
    # Rademacher: Var = (|x|^2 |y|^2 + <x,y>^2 - 2 sum x^2 y^2) / p; very sparse (Li et al. 2006, s = sqrt(d)):
    # Var = (|x|^2 |y|^2 + <x,y>^2 + (s - 3) sum x^2 y^2) / p.
    extra = -2.0 if sparse_s is None else sparse_s - 3.0
    var = (np.outer(norms2, norms2) + gram**2 + extra * cross4) / p
    iu = np.triu_indices(len(x), 1)
    return (est - gram)[iu] / np.sqrt(var[iu])


@pytest.mark.parametrize("kind", ["rademacher", "sparse"])
def test_inner_products_are_preserved_with_the_known_variance(kind):
    d, p = 4096, 512
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, d)).astype(np.float32)
    x[:10] += 0.8 * x[10:20]  # some correlated pairs, so <x, y> is not always near 0
    proj = Projector(kind, d, p, 11, device="cpu")
    z = _standardised_errors(x, proj, sparse_s=None if kind == "rademacher" else float(np.sqrt(d)))
    assert abs(z.mean()) < 0.25
    assert 0.75 < z.std() < 1.25


def test_bad_inputs():
    with pytest.raises(InputError, match="unknown projector"):
        Projector("fourier", 10, 2, 0)
    with pytest.raises(InputError, match="dim >= 1"):
        Projector("rademacher", 10, 0, 0)
    proj = Projector("rademacher", 10, 2, 0, device="cpu")
    with pytest.raises(InputError, match=r"expects \(b, 10\)"):
        proj.transform(np.zeros((2, 9), dtype=np.float32))
    with pytest.raises(InputError, match="fast_jl"):
        Projector("rademacher", 10, 2, 0, device="cpu", backend="fast_jl")
    with pytest.raises(InputError, match="not found"):
        load_projector("/nonexistent/projector.joblib")


@pytest.mark.gpu
def test_cuda_projection_is_a_rademacher_sketch():
    """On a GPU: TRAK's CudaProjector (fast_jl) when it runs, else BasicProjector drawn on the device;
    either way the default CUDA projector equals TRAK called directly with LESS's arguments (fast_jl: LESS's
    max_batch_size 16, where ours launches 32 rows at once: the same matrix)."""
    from trak.projectors import CudaProjector

    d, p = 4096, 512
    x = torch.randn(40, d, device="cuda")
    proj = Projector("rademacher", d, p, 0, device="cuda")
    if proj.backend == "fast_jl":
        ref = CudaProjector(d, p, 0, ProjectionType.rademacher, torch.device("cuda"), max_batch_size=16)
    else:
        ref = BasicProjector(d, p, 0, ProjectionType.rademacher, torch.device("cuda"), block_size=128)
    expected = ref.project(x, model_id=0).float().cpu().numpy()
    np.testing.assert_allclose(proj.transform(x), expected, rtol=1e-4, atol=1e-3)


def test_extraction_projectors_take_the_given_dtype():
    """gs.gradients.extraction.make_projectors builds Rademacher projectors in the dtype stream_features passes
    (projector_dtype of the model: bf16 on a GPU); the sparse kind has no dtype."""
    from gs.gradients.extraction import make_projectors

    params = {"projection": {"kind": "rademacher", "dims": [8, 16], "elrea_dim": 8}}
    projs = make_projectors(params, 500, 3, torch.bfloat16)
    assert sorted(projs) == [8, 16]
    assert all(p._trak.dtype == torch.bfloat16 and p.seed == 3 + dim for dim, p in projs.items())
    assert all(p._trak.dtype == torch.float32 for p in make_projectors(params, 500, 3).values())
    sparse = make_projectors({"projection": {"kind": "sparse", "dims": [8], "elrea_dim": 8}}, 500, 3, torch.bfloat16)
    assert sparse[8].kind == "sparse"


@pytest.mark.parametrize("cache_limit", [None, 0])  # the kept int8 matrix, and TRAK's regenerated one
def test_buffered_projection_equals_the_per_batch_one(cache_limit):
    """Blocks of 3, 4 and 9 rows through ``project_in_buffers`` at 8 rows a call: each payload gets its own
    rows of TRAK's BasicProjector applied to its block alone (the reference, called directly), in order;
    the 9-row block, larger than the buffer, goes alone; 3 project calls in all."""
    from gs.gradients.projection import project_in_buffers

    d, p = 2000, 160
    gen = torch.Generator().manual_seed(4)
    sizes = [3, 4, 9, 4, 4, 1]
    blocks = [torch.randn(b, d, generator=gen) for b in sizes]
    kwargs = {} if cache_limit is None else {"cache_limit_bytes": cache_limit}
    proj = Projector("rademacher", d, p, 11, device="cpu", **kwargs)
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return proj.project(x)

    out = list(project_in_buffers(((i, b) for i, b in enumerate(blocks)), counted, 8))
    assert [i for i, _ in out] == list(range(len(sizes)))
    assert calls == [7, 9, 8, 1]  # 3 + 4 (the 4 after them would not fit), 9 alone, 4 + 4, 1
    for (_, rows), block in zip(out, blocks, strict=True):
        expected = _trak_basic(d, p, 11, block)
        np.testing.assert_allclose(rows.numpy(), expected, atol=1e-5 * np.abs(expected).max())


def test_buffer_keeps_each_payload_with_its_rows_and_copies_an_identity_result():
    """An identity 'projection' returns the buffer itself: every payload still gets its own rows after the
    buffer is refilled; rows must be positive; the buffer takes the given dtype (the projector's)."""
    from gs.gradients.projection import project_in_buffers

    blocks = [torch.full((2, 3), float(i)) for i in range(5)]
    out = [(i, rows.clone()) for i, rows in project_in_buffers(((i, b) for i, b in enumerate(blocks)), lambda x: x, 4)]
    assert [i for i, _ in out] == list(range(5))
    for i, rows in out:
        assert torch.equal(rows, torch.full((2, 3), float(i))), i
    kept = list(project_in_buffers(((i, b) for i, b in enumerate(blocks)), lambda x: x, 4))
    assert [float(rows[0, 0]) for _, rows in kept] == [0.0, 1.0, 2.0, 3.0, 4.0]  # not overwritten
    seen = []
    list(project_in_buffers([(0, blocks[1])], lambda x: seen.append(x.dtype) or x, 4, torch.bfloat16))
    assert seen == [torch.bfloat16]
    with pytest.raises(InputError, match="rows must be >= 1"):
        list(project_in_buffers([(0, blocks[0])], lambda x: x, 0))
