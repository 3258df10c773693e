"""Online SVD (gs.gradients.svd): accuracy against the stacked exact SVD, FD's bound, coordinates, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gs.gradients.svd import (
    BrandSVD,
    FrequentDirections,
    exact_top_svd,
    make_online_svd,
    principal_angles,
    relative_singular_value_error,
)
from gs.io import InputError

torch.set_num_threads(1)

N, D, TRUE_RANK = 300, 2000, 5
SCALES = np.array([50.0, 30.0, 20.0, 10.0, 5.0])


def low_rank(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """``(N, D)`` float64 matrix of rank ``TRUE_RANK`` (exactly, if ``noise == 0``) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((D, TRUE_RANK)))[0].T
    x = (rng.standard_normal((N, TRUE_RANK)) * SCALES) @ basis
    return x + noise * rng.standard_normal((N, D)) if noise else x


def gram_difference_norm(a: np.ndarray, b: np.ndarray) -> float:
    """``||a^T a - b^T b||_2`` without forming ``d x d``.

    With ``[a; b]^T = Q R`` and ``J = diag(1, .., -1, ..)``, the difference is ``Q R J R^T Q^T``.
    """
    r = np.linalg.qr(np.concatenate([a, b]).T, mode="r")
    signs = np.concatenate([np.ones(a.shape[0]), -np.ones(b.shape[0])])
    return float(np.abs(np.linalg.eigvalsh((r * signs) @ r.T)).max())


def stream(method: str, x, rank: int, batch: int = 16, **options):
    svd = make_online_svd(method, rank, **options)
    for i in range(0, x.shape[0], batch):
        svd.partial_fit(x[i : i + batch])
    return svd


@pytest.fixture(scope="module")
def exact_data():
    return low_rank()


@pytest.fixture(scope="module")
def noisy_data():
    return low_rank(noise=0.05, seed=1)


def test_helpers_sanity():
    eye = np.eye(4, 10)
    assert np.allclose(principal_angles(eye[:2], eye[:2]), 0.0)
    assert np.allclose(principal_angles(eye[:2], eye[2:4]), np.pi / 2)
    tilt = np.zeros((1, 10))
    tilt[0, 0], tilt[0, 1] = np.cos(0.3), np.sin(0.3)
    assert principal_angles(eye[:1], tilt) == pytest.approx([0.3])
    tiny = np.zeros((1, 10))
    tiny[0, 0], tiny[0, 5] = np.cos(1e-10), np.sin(1e-10)  # below arccos resolution
    assert principal_angles(tiny, eye[:3]) == pytest.approx([1e-10], rel=1e-6)
    assert principal_angles(eye[1:3], eye[:2]) == pytest.approx([0.0, np.pi / 2])
    assert relative_singular_value_error([3.0, 4.0], [3.0, 4.0]) == 0.0
    assert relative_singular_value_error([3.0], [3.0, 4.0]) == pytest.approx(0.8)
    x = low_rank(noise=0.01)
    s1, v1 = exact_top_svd(x, 5)
    s2, v2 = exact_top_svd(torch.from_numpy(x.astype(np.float32)), 5, method="gram")
    s3, v3 = exact_top_svd(x[:40].T, 5, method="gram")  # tall input takes the other Gram branch
    _, s3_ref, _ = np.linalg.svd(x[:40].T, full_matrices=False)
    assert relative_singular_value_error(s2, s1) < 1e-6
    assert principal_angles(v1, v2).max() < 1e-4
    assert relative_singular_value_error(s3, s3_ref[:5]) < 1e-10
    assert np.allclose(v1 @ v1.T, np.eye(5), atol=1e-12)


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
@pytest.mark.parametrize("rank", [5, 8])
def test_exact_low_rank_recovered(exact_data, method, rank):
    s_ex, v_ex = exact_top_svd(exact_data, TRUE_RANK)
    svd = stream(method, exact_data, rank)
    # Data of numerical rank 5: only 5 valid directions, even when asked for 8.
    assert svd.components_.shape == (TRUE_RANK, D)
    assert svd.n_seen_ == N
    assert np.allclose(svd.components_ @ svd.components_.T, np.eye(TRUE_RANK), atol=1e-10)
    assert np.all(np.diff(svd.singular_values_) <= 0)
    assert principal_angles(svd.components_, v_ex).max() < 1e-10
    assert relative_singular_value_error(svd.singular_values_, s_ex) < 1e-10
    # Same sign convention as the reference: the components themselves agree.
    assert np.abs(svd.components_ - v_ex).max() < 1e-8


@pytest.mark.parametrize("rank", [5, 8])
def test_brand_noisy(noisy_data, rank):
    s_ex, v_ex = exact_top_svd(noisy_data, rank)
    svd = stream("brand", noisy_data, rank)
    assert svd.components_.shape == (rank, D)
    assert principal_angles(svd.components_[:TRUE_RANK], v_ex[:TRUE_RANK]).max() < 1e-4
    assert relative_singular_value_error(svd.singular_values_[:TRUE_RANK], s_ex[:TRUE_RANK]) < 1e-6
    # Oversampling keeps the reported directions at least as good.
    over = stream("brand", noisy_data, rank, oversample=8)
    assert principal_angles(over.components_[:TRUE_RANK], v_ex[:TRUE_RANK]).max() < 1e-4


@pytest.mark.parametrize("ell", [6, 10, 16])
def test_frequent_directions_error_bound(noisy_data, ell):
    rank = ell // 2 if ell > 6 else 5
    svd = stream("frequent_directions", noisy_data, rank, sketch_size=ell)
    assert isinstance(svd, FrequentDirections)
    sketch = svd.sketch_
    assert sketch.shape[0] <= ell
    gram_err = gram_difference_norm(noisy_data, sketch)
    sig = np.linalg.svd(noisy_data, compute_uv=False)
    assert gram_err <= svd.shrinkage_ * (1 + 1e-9)
    for k in range(ell):
        tail = float(np.sum(sig[k:] ** 2))
        assert gram_err <= tail / (ell - k) * (1 + 1e-9), k
    # Gradients of rank 5 under small noise: subspace still close to the exact one.
    _, v_ex = exact_top_svd(noisy_data, TRUE_RANK)
    assert principal_angles(svd.components_[:TRUE_RANK], v_ex).max() < 0.01
    assert svd.seen_coordinates() is None


def test_frequent_directions_bound_is_tight_enough_to_fail_without_shrinking():
    """A sketch that just drops rows would violate the bound: the check above can fail."""
    x = low_rank(noise=0.05, seed=1)
    top = np.linalg.svd(x[30:50], compute_uv=False)[0]
    assert gram_difference_norm(x[:50], x[:30]) == pytest.approx(top**2)
    dropped = x[:8]
    gram_err = gram_difference_norm(x, dropped)
    sig = np.linalg.svd(x, compute_uv=False)
    assert gram_err > float(np.sum(sig[5:] ** 2)) / (8 - 5)


def test_brand_seen_coordinates(exact_data, noisy_data):
    svd = stream("brand", exact_data, 5, batch=16)
    z = svd.seen_coordinates()
    assert z.shape == (N, TRUE_RANK)
    ref = exact_data @ svd.components_.T
    assert np.abs(z - ref).max() <= 1e-9 * np.abs(ref).max()
    # Noisy rows: coordinates differ from the projection only by the truncated noise.
    svd = stream("brand", noisy_data, 5, batch=16)
    z = svd.seen_coordinates()
    ref = noisy_data @ svd.components_.T
    _, v_ex = exact_top_svd(noisy_data, 5)
    optimal_tail = np.linalg.norm(noisy_data - noisy_data @ v_ex.T @ v_ex)
    assert np.linalg.norm(z - ref) < 0.05 * optimal_tail
    # transform is the second-pass equivalent.
    assert np.allclose(svd.transform(noisy_data[:7]), ref[:7])


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
def test_batch_size_independent_and_deterministic(exact_data, method):
    runs = {b: stream(method, exact_data, 5, batch=b) for b in (1, 7, 16, N)}
    ref = runs[16]
    for svd in runs.values():
        assert np.abs(svd.components_ - ref.components_).max() < 1e-9
        assert np.allclose(svd.singular_values_, ref.singular_values_, rtol=1e-10)
        if method == "brand":  # batch=1 also exercises the lazy left factor's multiply-outs
            assert np.abs(svd.seen_coordinates() - ref.seen_coordinates()).max() < 1e-8
    again = stream(method, exact_data, 5, batch=16)
    assert np.array_equal(again.components_, ref.components_)
    assert np.array_equal(again.singular_values_, ref.singular_values_)
    if method == "brand":
        assert np.array_equal(again.seen_coordinates(), ref.seen_coordinates())


def test_brand_lazy_left_factor_multiplies_out():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((120, 50))
    svd = BrandSVD(4)
    for row in x:
        svd.partial_fit(row[None, :])
    assert len(svd._w) < 120  # rotations were multiplied into U at least once
    assert np.abs(svd.components_ @ svd.components_.T - np.eye(4)).max() < 1e-12
    z = svd.seen_coordinates()
    assert z.shape == (120, 4)
    # U is orthonormal, so coordinates have column norms equal to the singular values.
    assert np.allclose(np.linalg.norm(z, axis=0), svd.singular_values_, rtol=1e-8)


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
def test_small_late_direction_kept(method):
    """A direction 1e-6 times weaker than the rest, arriving late, is still found exactly."""
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((D, 4)))[0].T
    strong = rng.standard_normal((150, 3)) @ basis[:3] * 100.0
    weak = rng.standard_normal((50, 1)) @ basis[3:] * 1e-4 + rng.standard_normal((50, 3)) @ basis[:3] * 100.0
    x = np.concatenate([strong, weak])
    s_ex, v_ex = exact_top_svd(x, 4)
    svd = stream(method, x, 4)
    assert svd.components_.shape == (4, D)
    assert principal_angles(svd.components_, v_ex).max() < 1e-6
    assert svd.singular_values_[3] == pytest.approx(s_ex[3], rel=1e-6)
    assert np.abs(svd.components_ @ svd.components_.T - np.eye(4)).max() < 1e-12


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
def test_rank_larger_than_rows_seen(method):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 40))
    svd = make_online_svd(method, 6)
    svd.partial_fit(x[:2])
    assert svd.components_.shape == (2, 40)
    svd.partial_fit(x[2:])
    s_ex, v_ex = exact_top_svd(x, 6)
    assert svd.components_.shape == (3, 40) and s_ex.shape == (3,)
    assert principal_angles(svd.components_, v_ex).max() < 1e-6
    assert relative_singular_value_error(svd.singular_values_, s_ex) < 1e-10
    svd.partial_fit(np.zeros((0, 40)))  # empty block: no-op
    assert svd.n_seen_ == 3


def test_zero_rows_and_torch_input(exact_data):
    svd = make_online_svd("brand", 3)
    svd.partial_fit(np.zeros((4, D)))
    assert svd.components_.shape == (0, D) and svd.n_seen_ == 4
    x32 = exact_data.astype(np.float32)
    a = stream("brand", x32, 5)
    b = stream("brand", torch.from_numpy(x32), 5)
    assert np.array_equal(a.components_, b.components_)
    assert np.array_equal(a.transform(torch.from_numpy(x32[:3])), a.transform(x32[:3]))


def test_errors():
    with pytest.raises(InputError, match="unknown online SVD method"):
        make_online_svd("lanczos", 4)
    with pytest.raises(InputError, match="bad option"):
        make_online_svd("brand", 4, sketch_size=9)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="rank"):
            make_online_svd("brand", bad)
    with pytest.raises(InputError, match="sketch_size"):
        make_online_svd("frequent_directions", 4, sketch_size=4)
    with pytest.raises(InputError, match="oversample"):
        make_online_svd("brand", 4, oversample=-1)
    for method in ("brand", "frequent_directions"):
        svd = make_online_svd(method, 2)
        for ask in (lambda s: s.components_, lambda s: s.singular_values_, lambda s: s.seen_coordinates()):
            with pytest.raises(InputError, match="no data seen"):
                ask(svd)
        with pytest.raises(InputError, match="no data seen"):
            svd.transform(np.ones((1, 5)))
        with pytest.raises(InputError, match="2-D"):
            svd.partial_fit(np.ones(5))
        svd.partial_fit(np.ones((3, 5)))
        with pytest.raises(InputError, match="expected 5 columns"):
            svd.partial_fit(np.ones((2, 6)))
        with pytest.raises(InputError, match="expected 5 columns"):
            svd.transform(np.ones((2, 4)))
        bad = np.ones((4, 5))
        bad[2, 1] = np.nan
        with pytest.raises(InputError, match=r"row 2 of the batch \(row 5 overall\)"):
            svd.partial_fit(bad)
        bad[2, 1] = 1.0
        bad[3, 4] = -np.inf
        with pytest.raises(InputError, match="row 3 of the batch"):
            svd.partial_fit(torch.from_numpy(bad))
        with pytest.raises(InputError, match="row 0 of the batch .* too large"):
            svd.partial_fit(np.full((1, 5), 1e308))
        assert svd.n_seen_ == 3  # rejected blocks leave the state untouched
    with pytest.raises(InputError, match="dimensions differ"):
        principal_angles(np.eye(2, 4), np.eye(2, 5))
    with pytest.raises(InputError, match="unknown exact SVD method"):
        exact_top_svd(np.eye(3), 2, method="qr")


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
def test_float32_state_accuracy(method):
    """float32 state (the accelerator default) against numpy's exact float64 SVD of the same rows."""
    exact32 = low_rank(seed=1).astype(np.float32)  # rank 5 plus float32 rounding
    noisy32 = low_rank(noise=0.05, seed=1).astype(np.float32)
    s_ex, v_ex = exact_top_svd(exact32.astype(np.float64), TRUE_RANK)
    svd = stream(method, exact32, 8, batch=1, dtype="float32")  # 300 updates: rounding accumulates
    assert svd.dtype == torch.float32 and svd._vt.dtype == torch.float32
    # Rounding-level directions (measured <= ~3e-7 of the scale) are dropped, not reported.
    assert svd.components_.shape == (TRUE_RANK, D)
    assert np.degrees(principal_angles(svd.components_, v_ex)).max() < 1e-3
    assert relative_singular_value_error(svd.singular_values_, s_ex) < 1e-6
    # Orthonormality drifts with the number of float32 updates (measured 1.3e-6 after 300).
    assert np.abs(svd.components_ @ svd.components_.T - np.eye(TRUE_RANK)).max() < 5e-6
    s_ex, v_ex = exact_top_svd(noisy32.astype(np.float64), 8)
    f32 = stream(method, noisy32, 8, dtype="float32")
    f64 = stream(method, noisy32, 8, dtype="float64")
    # float32 state changes the answer by far less than the streaming method's own error.
    assert np.degrees(principal_angles(f32.components_[:TRUE_RANK], f64.components_[:TRUE_RANK])).max() < 1e-3
    assert relative_singular_value_error(f32.singular_values_, f64.singular_values_) < 1e-6
    if method == "brand":
        assert np.degrees(principal_angles(f32.components_[:TRUE_RANK], v_ex[:TRUE_RANK])).max() < 1e-2
        ref = noisy32.astype(np.float64) @ f64.components_.T
        assert np.abs(f32.seen_coordinates() - ref).max() < 1e-3 * np.abs(ref).max()


@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_state_dict_resumes_bit_for_bit(noisy_data, method, dtype, tmp_path):
    """Checkpoint after 10 blocks, restore into a fresh instance through a file, continue: identical."""
    whole = stream(method, noisy_data, 6, batch=16, dtype=dtype)
    first = stream(method, noisy_data[:160], 6, batch=16, dtype=dtype)
    torch.save(first.state_dict(), tmp_path / "svd.pt")
    resumed = make_online_svd(method, 6, dtype=dtype)
    resumed.load_state_dict(torch.load(tmp_path / "svd.pt", weights_only=True))
    assert resumed.n_seen_ == 160
    for i in range(160, N, 16):
        resumed.partial_fit(noisy_data[i : i + 16])
    assert np.array_equal(resumed.components_, whole.components_)
    assert np.array_equal(resumed.singular_values_, whole.singular_values_)
    if method == "brand":
        assert np.array_equal(resumed.seen_coordinates(), whole.seen_coordinates())
    else:
        assert resumed.shrinkage_ == whole.shrinkage_ > 0
    # A state of another configuration is refused.
    with pytest.raises(InputError, match="online SVD state is for"):
        make_online_svd(method, 7, dtype=dtype).load_state_dict(first.state_dict())
    other = "float32" if dtype == "float64" else "float64"
    with pytest.raises(InputError, match="online SVD state is for"):
        make_online_svd(method, 6, dtype=other).load_state_dict(first.state_dict())


def test_device_and_dtype_resolution():
    assert make_online_svd("brand", 2).dtype == torch.float64  # cpu default: float64
    assert make_online_svd("brand", 2, device="cpu", dtype="float32").dtype == torch.float32
    with pytest.raises(InputError, match="dtype must be"):
        make_online_svd("brand", 2, dtype="float16")
    with pytest.raises(InputError, match="unknown SVD device"):
        make_online_svd("brand", 2, device="nowhere")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device is visible"):
            make_online_svd("brand", 2, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["brand", "frequent_directions"])
def test_cuda_state_matches_exact_svd(noisy_data, method):
    """On CUDA (default float32 state, and float64) against numpy's exact SVD on the CPU."""
    s_ex, v_ex = exact_top_svd(noisy_data, TRUE_RANK)
    for dtype, tol_deg in (("auto", 1e-2), ("float64", 1e-2)):
        svd = stream(method, torch.from_numpy(noisy_data).float().cuda(), 8, dtype=dtype, device="cuda")
        assert svd._vt.is_cuda
        assert svd.dtype == (torch.float32 if dtype == "auto" else torch.float64)
        assert np.degrees(principal_angles(svd.components_[:TRUE_RANK], v_ex)).max() < tol_deg
        if method == "brand":
            assert relative_singular_value_error(svd.singular_values_[:TRUE_RANK], s_ex) < 1e-5
            cpu = stream(method, noisy_data.astype(np.float32), 8, dtype="float64")
            ours, ref = svd.seen_coordinates()[:, :TRUE_RANK], cpu.seen_coordinates()[:, :TRUE_RANK]
            assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()
