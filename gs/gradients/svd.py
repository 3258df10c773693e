"""Online (streaming) truncated SVD of per-sample gradients in full dimension.

GradientSpace (arXiv 2512.06678) clusters instruction-tuning samples by their per-sample LoRA
gradients without projecting them to a low dimension first and without storing all of them: the
rows ``g_i`` (one gradient of dimension ``d`` per sample, ``d`` up to ~10^6) are streamed in
blocks through an online SVD that keeps only ``O(d (r + b))`` numbers for rank ``r`` and block
size ``b``. The paper's abstract does not name the algorithm, so two published ones sit behind a
single interface, :class:`OnlineSVD`, chosen by name with :func:`make_online_svd`:

``"brand"`` -- :class:`BrandSVD`
    Brand's incremental thin SVD with rank truncation: M. Brand, "Incremental singular value
    decomposition of uncertain data with missing values", ECCV 2002, and "Fast low-rank
    modifications of the thin singular value decomposition", Linear Algebra Appl. 415 (2006);
    the same block update is the sequential Karhunen-Loeve step of Ross, Lim, Lin, Yang,
    "Incremental learning for robust visual tracking", IJCV 77 (2008) (without their forgetting
    factor and mean update). It also tracks the left factor ``U`` lazily (Brand 2006, Sec. 4), so
    :meth:`OnlineSVD.seen_coordinates` gives every seen row's coordinates in the *final* basis
    without a second pass over the gradients.

``"frequent_directions"`` -- :class:`FrequentDirections`
    Frequent Directions: E. Liberty, "Simple and deterministic matrix sketching", KDD 2013;
    M. Ghashami, E. Liberty, J. M. Phillips, D. P. Woodruff, "Frequent Directions: simple and
    deterministic matrix sketching", SIAM J. Comput. 45(5) (2016). Deterministic guarantee
    ``||A^T A - B^T B||_2 <= ||A - A_k||_F^2 / (ell - k)`` for every ``k < ell``. It cannot
    recover per-row coordinates; :meth:`~OnlineSVD.seen_coordinates` returns ``None`` and the
    caller makes a second pass with :meth:`~OnlineSVD.transform`.

Conventions the caller must know:

* **No centering.** The rows are *not* mean-centred: GradientSpace clusters gradient directions,
  and the mean gradient is itself a meaningful (usually dominant) direction. This is a truncated
  SVD of the raw matrix, not a PCA. Centre the rows yourself before streaming if you want PCA.
* Inputs are ``(b, d)`` numpy arrays or torch tensors (any float dtype, any device). The ``(., d)``
  state and products live in torch on a chosen ``device`` in a chosen state ``dtype``; the small
  ``O((r + b)^2)`` eigen/SVD problems are numpy float64 on the CPU. Results the callers read
  (``components_``, ``singular_values_``, coordinates) are numpy float64. A ``(0, d)`` block is a no-op.
* **Precision.** ``dtype="auto"`` is float64 on the CPU (the reference behaviour the tests pin
  down to ~1e-10) and float32 on an accelerator (half the memory and bandwidth: at paper scale
  ``V^T`` is (r, 109M)). In float32 state every inner product over ``d`` (Gram matrices, ``X V``)
  is accumulated in float64 over column chunks (:func:`_inner`), so the only loss is the float32
  rounding of the stored rows: measured against the exact float64 SVD of noisy rank-5 data
  (``tests/gradients/test_svd.py::test_float32_state_accuracy``) the components agree to ~1e-3 degree and
  the singular values to ~1e-6 relative, and the rows stay orthonormal to ~1e-6 (a float32
  drift that grows slowly with the number of updates: 1.3e-6 after 300); directions under
  ``_F32_RANK_RTOL`` (1e-5) of the scale count as rounding noise instead of ``eps * max(d, m)``.
* **Checkpoints.** :meth:`OnlineSVD.state_dict` / :meth:`OnlineSVD.load_state_dict` hold the
  full state (``V^T``, ``s``, Brand's lazy left factor, FD's shrinkage); a restored instance
  continues bit for bit as the uninterrupted one on the same machine.
* **Number of components.** ``components_`` has ``k = min(rank, numerical rank of the rows seen)``
  rows, so ``k <= min(rank, n_seen)``; directions whose singular value is at rounding level
  (``<= eps * max(d, m) * sigma_max``, the :func:`numpy.linalg.matrix_rank` tolerance) are dropped
  instead of being returned as arbitrary vectors. For real gradients ``k = min(rank, n_seen)``.
  Check ``components_.shape[0]`` rather than assuming ``rank`` columns in the coordinates.
* **Numerics.** Block factorisations use small Gram matrices (BLAS-3, fast for ``d >> b``)
  with a second orthonormalisation round, so bases are orthonormal to ~1e-14 (float64 state); the price is that,
  within one block (for Brand: within the block's residual outside the current subspace),
  directions below ~3e-7 of its largest singular value (under the float32 resolution of the
  gradients) are dropped. A small new direction is kept as long as it stands out in its block.
* **Signs.** Singular vectors are only defined up to sign; every function here flips each
  component so that its entry of largest magnitude is positive (the ``v``-based rule of
  scikit-learn's ``svd_flip``), so results are comparable across methods and runs. Coordinates
  from :meth:`~OnlineSVD.seen_coordinates` use the same signs as ``components_``.
* Results are deterministic for the same input (same blocks in the same order) on one machine.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import numpy as np
import torch

from gs.io import InputError

METHODS = ("brand", "frequent_directions")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
FLOAT64_EPS = float(np.finfo(np.float64).eps)
# float32 state: rounding level of the stored (., d) arrays. Measured on exact low-rank data
# (tests/gradients/test_svd.py::test_float32_state_accuracy): spurious directions come out at <= ~1e-6 of
# the scale; 1e-5 keeps a margin and is still far below any direction that competes for the top r.
_F32_RANK_RTOL = 1e-5
# Inner products over d in float32 state are accumulated in float64 over column chunks of at most
# this many elements per operand (128 MB of float64 temporaries).
_CHUNK_ELEMS = 1 << 24


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None``: CUDA if visible, else CPU; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown SVD device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"SVD device {device!r}: no CUDA device is visible (use auto or cpu)")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """State dtype: ``"auto"``/``None`` is float64 on the CPU and float32 on an accelerator."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float64 if device.type == "cpu" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"SVD state dtype must be auto, float32 or float64, got {dtype!r}")
    return DTYPES[dtype]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Any array-like (numpy array, torch tensor on any device) as a float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: not a numeric array ({e})") from None
    return arr


def _to_tensor(x: Any, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Any array-like as a tensor on ``device`` in ``dtype`` (no copy if it already is one)."""
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if arr.dtype.kind not in "biuf":
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as e:
                raise InputError(f"{name}: not a numeric array ({e})") from None
        x = torch.from_numpy(np.ascontiguousarray(arr))
    return x.detach().to(device=device, dtype=dtype)


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite float64 ``(n, d)`` matrix; a NaN/inf names its first bad row."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D (rows, dimension) array, got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InputError(f"{name}: row {row} contains NaN or inf")
    return arr


def sign_flips(vt: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(k,)`` float64 signs making the largest-magnitude entry of each row of ``vt`` ``(k, d)`` positive."""
    if vt.shape[0] == 0:
        return np.ones(0)
    if isinstance(vt, torch.Tensor):
        idx = torch.argmax(vt.abs(), dim=1)
        signs = torch.sign(vt[torch.arange(vt.shape[0], device=vt.device), idx]).double().cpu().numpy()
    else:
        idx = np.argmax(np.abs(vt), axis=1)
        signs = np.sign(vt[np.arange(vt.shape[0]), idx]).astype(np.float64)
    signs[signs == 0] = 1.0
    return signs


def _tolerance(sigma_max: float, *dims: int) -> float:
    """Rank tolerance ``eps * max(dims) * sigma_max`` (as :func:`numpy.linalg.matrix_rank`)."""
    return FLOAT64_EPS * max(dims) * sigma_max


def _state_tolerance(sigma_max: float, dtype: torch.dtype, *dims: int) -> float:
    """Rounding level of a factorisation of ``(., d)`` data held in ``dtype``.

    float64: the :func:`numpy.linalg.matrix_rank` rule. float32: the inner products are exact to
    float64 (:func:`_inner`), so the noise is the float32 rounding of the stored rows and of one
    ``x - C V^T`` update, a few ``eps32`` of the scale, independent of ``d``: ``_F32_RANK_RTOL``.
    """
    if dtype == torch.float64:
        return _tolerance(sigma_max, *dims)
    return _F32_RANK_RTOL * sigma_max


# Gram eigenvalues below this fraction of the largest are rounding noise: singular values below
# sqrt(1e-13) ~ 3e-7 of a block's largest, i.e. under the float32 resolution of the gradients.
_GRAM_FLOOR = 1e-13


def inner(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """``a @ b^T`` ``(p, q)`` as float64 numpy for ``a`` ``(p, d)``, ``b`` ``(q, d)`` (same device and dtype).

    float64 state: one matmul. float32 state: accumulated in float64 over column chunks (products
    of float32 numbers are exact in float64), so every inner product over ``d`` is as accurate as
    the stored rows allow and only ``O((p + q) * chunk)`` float64 temporaries exist.
    """
    p, q, d = a.shape[0], b.shape[0], a.shape[1]
    if a.dtype == torch.float64:
        return (a @ b.T).cpu().numpy()
    out = torch.zeros(p, q, dtype=torch.float64, device=a.device)
    if p == 0 or q == 0:
        return out.cpu().numpy()
    step = max(1, _CHUNK_ELEMS // max(p, q))
    for j in range(0, d, step):
        ac = a[:, j : j + step].double()
        bc = ac if b is a else b[:, j : j + step].double()
        out.addmm_(ac, bc.T)
    return out.cpu().numpy()


def small(m: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A small float64 numpy matrix as a tensor on ``like``'s device and dtype."""
    return torch.from_numpy(np.ascontiguousarray(m)).to(device=like.device, dtype=like.dtype)


def _svqb_transform(gram: np.ndarray, floor: float) -> np.ndarray:
    """``(q, p)`` matrix ``L^{-1/2} W^T`` from ``gram = W L W^T`` ``(p, p)``, eigenvalues ``> floor`` kept."""
    lam, w = np.linalg.eigh(gram)
    lam, w = lam[::-1], w[:, ::-1]
    keep = int(np.count_nonzero(lam > floor)) if lam.size and lam[0] > 0 else 0
    return (w[:, :keep] / np.sqrt(lam[:keep])).T


class _RowBasis(NamedTuple):
    """Orthonormal rows ``z = t2 @ y - k2 @ against`` ``(q, d)``, kept in factored form.

    ``y`` ``(q1, d)`` tensor is the first-round basis, ``t2`` ``(q, q1)`` and ``k2`` ``(q, k)`` small
    (numpy float64); ``cross = m against^T`` ``(p, k)`` for the ``(p, d)`` matrix ``m`` it was built from.
    """

    y: torch.Tensor
    t2: np.ndarray
    k2: np.ndarray
    cross: np.ndarray

    def coefficients(self, m: torch.Tensor) -> np.ndarray:
        """``m @ z^T`` ``(p, q)`` for the ``(p, d)`` matrix the basis was built from (one pass)."""
        return inner(m, self.y) @ self.t2.T - self.cross @ self.k2.T


def _row_basis(m: torch.Tensor, against: torch.Tensor, scale: float = 0.0) -> _RowBasis:
    """Orthonormal basis of the significant row space of ``m`` ``(p, d)``, orthogonal to ``against``.

    Two rounds of SVQB (Stathopoulos and Wu, "A block orthogonalization procedure with constant
    synchronization requirements", SIAM J. Sci. Comput. 23(6), 2002): eigendecompose the small
    Gram matrix ``m m^T = W L W^T`` and take ``L^{-1/2} W^T m``; the second round restores
    orthonormality to rounding level ("twice is enough"). ``against`` ``(k, d)`` (orthonormal rows,
    ``k`` may be 0) is projected out in each round (block classical Gram-Schmidt with
    reorthogonalisation, BCGS2), because the ``L^{-1/2}`` scaling amplifies rounding-level
    components along it. Directions with singular value ``<= sqrt(_GRAM_FLOOR) * sigma_max(m)`` or
    at the state's rounding level (:func:`_state_tolerance` of ``max(scale, ||m||_F)``) are dropped.
    Only ``p x p`` eigenproblems (numpy float64, CPU) and matrix products (BLAS-3, on ``m``'s
    device) touch ``d``, and the projections are folded into small matrices, so it streams
    ``(p, d)`` data about six times. Allocates one ``(q1, d)`` tensor ``y``, ``q1 <= p``.
    """
    gram = inner(m, m)
    cross = inner(m, against)  # (p, k)
    g0 = gram - cross @ cross.T  # Gram of m with against projected out
    norm_m = float(np.sqrt(max(np.trace(gram), 0.0)))
    abs_tol = _state_tolerance(max(scale, norm_m), m.dtype, m.shape[1], m.shape[0] + cross.shape[1])
    t1 = _svqb_transform(g0, max(abs_tol**2, _GRAM_FLOOR * float(np.abs(g0).max(initial=0.0))))
    y = small(t1, m) @ m
    if cross.size and t1.shape[0]:
        y.addmm_(small(t1 @ cross, m), against, alpha=-1.0)
    c1 = inner(y, against)
    t2 = _svqb_transform(inner(y, y) - c1 @ c1.T, 0.5)  # y is orthonormal up to rounding: eigenvalues ~ 1
    return _RowBasis(y, t2, t2 @ c1, cross)


class _BlockUpdate(NamedTuple):
    """One block update of a thin SVD ``diag(s) V^T`` by new rows ``X`` (see :class:`BrandSVD`).

    ``[diag(s) V^T; X] = U_K diag(S_K) V_K^T [V^T; Q^T]`` with ``uk`` ``(m + b, p)``, ``sk`` ``(p,)``,
    ``vkt`` ``(p, m + q)`` (numpy float64); ``Q^T`` is held factored in ``basis``; ``vt`` the old state.
    """

    uk: np.ndarray
    sk: np.ndarray
    vkt: np.ndarray
    basis: _RowBasis
    vt: torch.Tensor

    def right(self, coef: np.ndarray) -> torch.Tensor:
        """``coef @ [V^T; Q^T]`` ``(k, d)`` for ``coef`` ``(k, m + q)``, ``Q^T`` folded in (no stack)."""
        m = self.vt.shape[0]
        v1, v2 = coef[:, :m], coef[:, m:]
        if m:
            out = small(v1 - v2 @ self.basis.k2, self.vt) @ self.vt
        else:
            out = self.vt.new_zeros((coef.shape[0], self.vt.shape[1]))
        if v2.shape[1] and coef.shape[0]:
            out.addmm_(small(v2 @ self.basis.t2, self.vt), self.basis.y)
        return out


def _block_update(vt: torch.Tensor, s: np.ndarray, x: torch.Tensor) -> _BlockUpdate:
    """SVD of ``[diag(s) vt; x]`` for ``vt`` ``(m, d)`` orthonormal rows, ``s`` ``(m,)``, ``x`` ``(b, d)``.

    Brand's update (Brand 2006, Sec. 3; Ross et al. 2008): ``C = x V``, residual ``R = x - C V^T``,
    an orthonormal basis ``Q^T`` of ``R``'s rows orthogonal to ``V`` (:func:`_row_basis`),
    ``P^T = R Q``, and the SVD of the small core ``K = [[diag(s), 0], [C, P^T]]`` ``(m + b, m + q)``
    (numpy float64 on the CPU). ``O(d (m + b)^2)`` time; allocates ``R`` ``(b, d)`` (freed here) and
    ``y`` ``(<= b, d)`` on ``x``'s device.
    """
    m, b = vt.shape[0], x.shape[0]
    c = inner(x, vt)  # (b, m)
    resid = torch.addmm(x, small(c, x), vt, alpha=-1.0) if m else x.clone()
    basis = _row_basis(resid, vt, scale=max(float(s[0]) if m else 0.0, float(np.linalg.norm(c))))
    q = basis.t2.shape[0]
    pt = basis.coefficients(resid)  # (b, q): resid ~= pt @ Q^T
    del resid
    core = np.zeros((m + b, m + q))
    core[:m, :m] = np.diag(s)
    core[m:, :m] = c
    core[m:, m:] = pt
    if core.shape[1] == 0:  # nothing but zero rows so far
        uk, sk, vkt = np.zeros((m + b, 0)), np.zeros(0), np.zeros((0, 0))
    else:
        uk, sk, vkt = np.linalg.svd(core, full_matrices=False)
    return _BlockUpdate(uk, sk, vkt, basis, vt)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t`` (exactly one copy, also from an accelerator)."""
    return t.detach().to("cpu", copy=True)


class OnlineSVD(abc.ABC):
    """Streaming truncated SVD of a tall matrix ``A`` ``(n, d)`` whose rows arrive in blocks.

    After any number of :meth:`partial_fit` calls, ``A ~= coords @ components_`` where
    ``components_`` ``(k, d)`` has orthonormal rows (the top-``k`` right singular vectors) and
    ``singular_values_`` ``(k,)`` is descending, ``k <= min(rank, n_seen_)`` (module docstring).

    The ``(., d)`` state lives on ``device`` (``"auto"``: CUDA if visible) in ``dtype`` (``"auto"``:
    float64 on the CPU, float32 on an accelerator; module docstring, "Precision"); small matrices
    are numpy float64. Peak memory of one :meth:`partial_fit` with ``m`` kept directions and a
    block of ``b`` rows, in state-dtype words on the device::

        d * (2 m + 3 b)   [+ d * b if the block arrives in another dtype/device]   + 2 * 2^24 float64

    (old and new ``V^T``, the block, its residual, the first-round basis; the last term the
    float64 chunks of :func:`_inner`, float32 state only). The residual is freed before the new
    ``V^T`` is formed, so the exact peak is ``d * max(m + 3 b, 2 m + 2 b)``; ``d (2 m + 3 b)`` bounds
    it (measured, ``d`` = 4M, ``m`` = 8, ``b`` = 16: 1351 MiB float64, 640 MiB float32, both under
    the bound's 1953 / 977 MiB, caller's block included). ``m <= rank + oversample`` for Brand,
    ``<= sketch_size`` for FD. Brand's left factor adds ``O(n m)`` float64 on the host.
    """

    method = ""

    def __init__(self, rank: int, *, device: str | torch.device | None = "cpu", dtype: str | None = "auto") -> None:
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
            raise InputError(f"rank must be an integer >= 1, got {rank!r}")
        self.rank = int(rank)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.dim: int | None = None
        self._n_seen = 0
        self._signed: torch.Tensor | None = None

    # -- input checking shared by all methods ---------------------------------------------------

    def _check_batch(self, batch: Any, *, fixing_dim: bool) -> torch.Tensor:
        """Validate a ``(b, d)`` block (as a state-dtype tensor on the device); the first one fixes ``d``."""
        x = _to_tensor(batch, "batch", self.device, self.dtype)
        if x.ndim != 2:
            raise InputError(f"batch: expected a 2-D (b, d) block of rows, got shape {tuple(x.shape)}")
        if self.dim is None:
            if not fixing_dim:
                raise InputError("no data seen yet: call partial_fit before asking for the SVD")
            if x.shape[1] < 1:
                raise InputError("batch: the gradient dimension d must be >= 1")
        elif x.shape[1] != self.dim:
            raise InputError(f"batch: expected {self.dim} columns (gradient dimension), got {x.shape[1]}")
        # A NaN/inf makes its row's sum non-finite: one cheap pass instead of an elementwise mask.
        sums_finite = torch.isfinite(x.sum(dim=1))
        if not bool(sums_finite.all()):
            finite = torch.isfinite(x).all(dim=1)
            bad_rows = (~finite).nonzero().flatten()
            row = int(bad_rows[0]) if bad_rows.numel() else int((~sums_finite).nonzero().flatten()[0])
            what = (
                "contains NaN or inf" if not bool(finite[row]) else f"has values too large for {self._dtype_name} sums"
            )
            raise InputError(f"batch: row {row} of the batch (row {self._n_seen + row} overall) {what}")
        return x

    @property
    def _dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def _require_data(self) -> None:
        if self.dim is None:
            raise InputError("no data seen yet: call partial_fit before asking for the SVD")

    # -- public interface ------------------------------------------------------------------------

    def partial_fit(self, batch: Any) -> OnlineSVD:
        """Absorb a block of rows ``batch`` ``(b, d)`` (numpy or torch, any float dtype and device)."""
        x = self._check_batch(batch, fixing_dim=True)
        if self.dim is None:
            self.dim = int(x.shape[1])
            self._init_state(self.dim)
        if x.shape[0] == 0:
            return self
        self._update(x)
        self._n_seen += x.shape[0]
        self._signed = None
        return self

    @property
    def n_seen_(self) -> int:
        """Number of rows absorbed so far."""
        return self._n_seen

    def components_tensor(self) -> torch.Tensor:
        """``(k, d)`` signed components as a state-dtype tensor on the device (no host copy; cached
        until the next :meth:`partial_fit`, so a second pass of :meth:`transform` calls reuses it)."""
        self._require_data()
        if self._signed is None:
            vt, _ = self._top()
            self._signed = vt * small(sign_flips(vt)[:, None], vt)
        return self._signed

    @property
    def components_(self) -> np.ndarray:
        """``(k, d)`` float64 numpy, orthonormal rows: the top right singular vectors, ``k <= rank``."""
        return np.array(self.components_tensor().double().cpu().numpy(), copy=True)  # never the cache itself

    @property
    def singular_values_(self) -> np.ndarray:
        """``(k,)`` float64, descending: the singular values matching :attr:`components_`."""
        self._require_data()
        return self._top()[1].copy()

    def transform(self, batch: Any) -> np.ndarray:
        """Coordinates ``batch @ components_.T`` ``(b, k)`` float64 numpy of a ``(b, d)`` block of rows."""
        self._require_data()
        x = self._check_batch(batch, fixing_dim=False)
        return inner(x, self.components_tensor())

    def seen_coordinates(self) -> np.ndarray | None:
        """``(n_seen, k)`` coordinates of every seen row (arrival order) in the final basis, or ``None``.

        ``None`` means the method cannot track them and the caller must make a second pass over
        the rows with :meth:`transform`.
        """
        self._require_data()
        return None

    def state_factors(self) -> tuple[torch.Tensor, np.ndarray]:
        """The whole internal state ``(V^T (m, d) state-dtype tensor on the device, s (m,) float64)``,
        unsigned, ``m`` up to ``rank + oversample`` (Brand) or ``sketch_size`` (FD), so that the rows
        seen are ``~= U diag(s) V^T`` (Brand) or ``A^T A ~= V diag(s^2) V^T`` (FD). What a merge of
        shard states (:mod:`gs.gradients.shards`) stacks."""
        self._require_data()
        return self._vt, self._s.copy()

    # -- checkpointing -----------------------------------------------------------------------------

    def _options(self) -> dict[str, int]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The full state as CPU tensors and plain Python values (``torch.save``-able, loadable with
        ``weights_only=True``): method, rank, options, dtype, ``d``, rows seen, ``V^T``, ``s`` and the
        method's extras (Brand: the lazy left factor; FD: the shrinkage)."""
        state: dict[str, Any] = {
            "method": self.method,
            "rank": self.rank,
            "options": self._options(),
            "dtype": self._dtype_name,
            "dim": self.dim,
            "n_seen": self._n_seen,
        }
        if self.dim is not None:
            state["vt"] = _cpu(self._vt)
            state["s"] = torch.from_numpy(self._s.copy())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> OnlineSVD:
        """Restore :meth:`state_dict` (moved to this instance's device); a state of another method,
        rank, options or dtype is an :class:`InputError`. Returns ``self``."""
        mine = {"method": self.method, "rank": self.rank, "options": self._options(), "dtype": self._dtype_name}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise InputError(f"online SVD state is for {theirs}, not {mine}")
        self._signed = None
        self.dim = None if state["dim"] is None else int(state["dim"])
        self._n_seen = int(state["n_seen"])
        if self.dim is not None:
            self._init_state(self.dim)
            self._vt = state["vt"].to(device=self.device, dtype=self.dtype)
            self._s = state["s"].double().numpy().copy()
            self._load_extras(state)
        return self

    @abc.abstractmethod
    def _load_extras(self, state: dict[str, Any]) -> None:
        """Restore the method's own part of :meth:`state_dict`."""

    # -- implementation hooks --------------------------------------------------------------------

    def _init_state(self, dim: int) -> None:
        """Allocate the empty state for gradient dimension ``dim``."""
        self._vt = torch.zeros((0, dim), dtype=self.dtype, device=self.device)
        self._s = np.zeros(0)

    @abc.abstractmethod
    def _update(self, x: torch.Tensor) -> None:
        """Absorb a validated non-empty state-dtype block ``x`` ``(b, d)`` on the device."""

    def _top(self) -> tuple[torch.Tensor, np.ndarray]:
        """Unsigned ``(components (k, d) tensor, singular values (k,) numpy)`` of the current estimate."""
        k = min(self.rank, self._s.shape[0])
        return self._vt[:k], self._s[:k]


class BrandSVD(OnlineSVD):
    """Brand's incremental truncated SVD (Brand 2002, 2006; Ross et al. 2008), block version.

    State: ``V^T`` ``(m, d)`` with orthonormal rows and ``s`` ``(m,)``, ``m <= rank + oversample``,
    so that the rows seen so far are ``A ~= U diag(s) V^T``. For a new block ``X`` ``(b, d)``:

    1. ``C = X V`` ``(b, m)`` and residual ``R = X - C V^T``;
    2. an orthonormal basis ``Q^T`` ``(q, d)`` of the residual's row space, orthogonal to ``V``
       (Brand's QR step, done here as two rounds of Gram-matrix orthonormalisation with the
       projection onto ``V`` repeated -- BCGS2 with SVQB, Stathopoulos and Wu 2002; "twice is
       enough": Giraud, Langou, Rozloznik, Comput. Math. Appl. 50 (2005) -- see
       :func:`_row_basis`), rounding-level directions dropped, and ``P^T = R Q`` ``(b, q)``;
    3. ``[A; X] = [[U, 0], [0, I]] K [V^T; Q^T]`` with the small core
       ``K = [[diag(s), 0], [C, P^T]]`` ``(m + b, m + q)``; its SVD ``K = U_K S_K V_K^T`` gives
       ``V^T <- (V_K^T)[:m'] [V^T; Q^T]``, ``s <- S_K[:m']``, ``U <- [[U, 0], [0, I]] U_K[:, :m']``,
       with ``m' = min(rank + oversample, numerical rank)``. ``Q`` is kept factored and folded
       into this product, so each block streams ``d``-long data about fifteen times.

    Cost per block ``O(d (m + b)^2)`` time, peak memory in :class:`OnlineSVD`. The left factor is
    kept lazily (numpy float64, host) as per-block rows plus the small ``(m, m')`` rotations
    ``U_K[:m, :m']`` (Brand 2006, Sec. 4), multiplied out only when the rotations would outgrow
    ``U`` itself, so tracking it costs ``O(n m)`` memory and amortised ``O(m^2)`` per row.

    ``oversample`` keeps that many extra directions internally (only the top ``rank`` are
    reported), which reduces the error from truncating before all data are seen; ``0`` is plain
    Brand. On data of exact rank ``<= rank`` the result is exact up to rounding and does not
    depend on the block size.
    """

    method = "brand"

    def __init__(
        self, rank: int, *, oversample: int = 0, device: str | torch.device | None = "cpu", dtype: str | None = "auto"
    ) -> None:
        super().__init__(rank, device=device, dtype=dtype)
        if isinstance(oversample, bool) or not isinstance(oversample, int | np.integer) or oversample < 0:
            raise InputError(f"oversample must be an integer >= 0, got {oversample!r}")
        self.oversample = int(oversample)

    def _options(self) -> dict[str, int]:
        return {"oversample": self.oversample}

    def _init_state(self, dim: int) -> None:
        super()._init_state(dim)
        # Left factor, lazily: U = stack_j(rows_j @ W[pos_j] @ W[pos_j + 1] @ ... @ W[-1]).
        self._u_blocks: list[tuple[np.ndarray, int]] = []
        self._w: list[np.ndarray] = []
        self._w_floats = 0
        self._u_floats = 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.dim is not None:
            state["u_rows"] = [torch.from_numpy(rows.copy()) for rows, _ in self._u_blocks]
            state["u_pos"] = [pos for _, pos in self._u_blocks]
            state["w"] = [torch.from_numpy(w.copy()) for w in self._w]
        return state

    def _load_extras(self, state: dict[str, Any]) -> None:
        self._u_blocks = [
            (r.double().numpy().copy(), int(p)) for r, p in zip(state["u_rows"], state["u_pos"], strict=True)
        ]
        self._w = [w.double().numpy().copy() for w in state["w"]]
        self._u_floats = sum(r.size for r, _ in self._u_blocks)
        self._w_floats = sum(w.size for w in self._w)

    def _update(self, x: torch.Tensor) -> None:
        m = self._s.shape[0]
        upd = _block_update(self._vt, self._s, x)
        sk = upd.sk
        tol = _state_tolerance(float(sk[0]) if sk.size else 0.0, self.dtype, x.shape[1], m + x.shape[0])
        new_m = min(self.rank + self.oversample, int(np.count_nonzero(sk > tol)))
        self._vt = upd.right(upd.vkt[:new_m])
        self._s = sk[:new_m].copy()
        self._push_left(upd.uk[:m, :new_m].copy(), upd.uk[m:, :new_m].copy())

    def _push_left(self, w: np.ndarray, rows: np.ndarray) -> None:
        """Record ``U <- [U @ w; rows]``; multiply out when the rotations outgrow ``U``."""
        self._w.append(w)
        self._w_floats += w.size
        self._u_blocks.append((rows, len(self._w)))
        self._u_floats += rows.size
        if self._w_floats > self._u_floats:
            u = self._left_factor()
            self._u_blocks = [(u, 0)]
            self._u_floats = u.size
            self._w = []
            self._w_floats = 0

    def _left_factor(self) -> np.ndarray:
        """The full left factor ``U`` ``(n_seen, m)`` in arrival order."""
        m = self._s.shape[0]
        suffix = [np.eye(m)]  # suffix[j] = W[n_w - j] @ ... @ W[-1]
        for w in reversed(self._w):
            suffix.append(w @ suffix[-1])
        n_w = len(self._w)
        parts = [rows @ suffix[n_w - pos] for rows, pos in self._u_blocks]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, m))

    def left_factor(self) -> np.ndarray:
        """``(n_seen, m)`` float64 left factor ``U`` (orthonormal columns, unsigned) matching
        :meth:`state_factors`: the seen rows are ``~= U diag(s) V^T``, arrival order."""
        self._require_data()
        return self._left_factor()

    def seen_coordinates(self) -> np.ndarray:
        """``(n_seen, k)`` coordinates ``U diag(s)`` of the seen rows, arrival order, no second pass.

        Row ``i`` equals ``x_i @ components_.T`` exactly when the data have rank ``<= rank``;
        otherwise it differs by the part of ``x_i`` discarded by earlier truncations.
        """
        self._require_data()
        u = self._left_factor()
        vt, s = self._top()
        k = s.shape[0]
        return u[:, :k] * (s * sign_flips(vt))[None, :]


class FrequentDirections(OnlineSVD):
    """Frequent Directions sketch (Liberty 2013; Ghashami, Liberty, Phillips, Woodruff 2016).

    Keeps a sketch ``B`` ``(<= ell, d)``, ``ell = sketch_size`` (default ``2 * rank``), always in
    diagonal form ``B = diag(s) V^T``. For a block ``X`` the SVD ``U S V^T`` of ``[B; X]`` is
    computed by the same small-core update as :class:`BrandSVD` (never stacking ``[B; X]``); if
    it has more than ``ell`` nonzero singular values it is shrunk by ``delta = S[ell-1]^2`` (the
    ``ell``-th squared singular value): ``B <- sqrt(max(S[:ell-1]^2 - delta, 0)) V^T[:ell-1]``,
    otherwise ``B <- S V^T`` (no loss). This is the block ("fast") form of FD, with the same
    guarantee ``0 <= A^T A - B^T B <= sum(delta)`` and
    ``sum(delta) <= ||A - A_k||_F^2 / (ell - k)`` for all ``k < ell`` (Ghashami et al. 2016,
    Thm. 1.1 proof: each shrink removes at least ``ell * delta`` of squared Frobenius mass).
    ``shrinkage_`` is that running ``sum(delta)``, an a-posteriori bound on
    ``||A^T A - B^T B||_2``.

    Components are the top right singular vectors of ``B``; ``singular_values_`` are ``B``'s,
    which underestimate ``A``'s (``s_B^2 >= s_A^2 - shrinkage_``). Time ``O(d (ell + b)^2)`` per
    block, peak memory in :class:`OnlineSVD` with ``m = ell``. Row coordinates are not tracked.
    """

    method = "frequent_directions"

    def __init__(
        self,
        rank: int,
        *,
        sketch_size: int | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | None = "auto",
    ) -> None:
        super().__init__(rank, device=device, dtype=dtype)
        ell = 2 * self.rank if sketch_size is None else sketch_size
        if isinstance(ell, bool) or not isinstance(ell, int | np.integer) or ell <= self.rank:
            raise InputError(f"sketch_size must be an integer > rank ({self.rank}), got {sketch_size!r}")
        self.sketch_size = int(ell)
        self.shrinkage_ = 0.0

    def _options(self) -> dict[str, int]:
        return {"sketch_size": self.sketch_size}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "shrinkage": self.shrinkage_}

    def _load_extras(self, state: dict[str, Any]) -> None:
        self.shrinkage_ = float(state["shrinkage"])

    def _update(self, x: torch.Tensor) -> None:
        ell = self.sketch_size
        upd = _block_update(self._vt, self._s, x)  # SVD of [B; X] without stacking it
        sig = upd.sk
        if sig.shape[0] > ell and sig[ell - 1] > 0:
            delta = float(sig[ell - 1]) ** 2
            self.shrinkage_ += delta
            sig = np.sqrt(np.maximum(sig[: ell - 1] ** 2 - delta, 0.0))
        tol = _state_tolerance(
            float(sig[0]) if sig.size else 0.0, self.dtype, x.shape[1], self._s.shape[0] + x.shape[0]
        )
        keep = int(np.count_nonzero(sig > tol))
        self._vt = upd.right(upd.vkt[:keep])
        self._s = sig[:keep].copy()

    @property
    def sketch_(self) -> np.ndarray:
        """The sketch ``B = diag(s) V^T`` ``(<= ell, d)`` float64 numpy: ``B^T B`` approximates ``A^T A``."""
        self._require_data()
        return self._s[:, None] * self._vt.double().cpu().numpy()


def make_online_svd(
    method: str, rank: int, *, device: str | torch.device | None = "cpu", dtype: str | None = "auto", **options: Any
) -> OnlineSVD:
    """An :class:`OnlineSVD` by name: ``"brand"`` (options: ``oversample``) or
    ``"frequent_directions"`` (options: ``sketch_size``, default ``2 * rank``), its state on
    ``device`` (``"auto"``: CUDA if visible) in ``dtype`` (``"auto"``, ``"float32"``, ``"float64"``).

    An unknown method or option is an :class:`~gs.io.InputError`.
    """
    classes: dict[str, type[OnlineSVD]] = {"brand": BrandSVD, "frequent_directions": FrequentDirections}
    if method not in classes:
        raise InputError(f"unknown online SVD method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        return classes[method](rank, device=device, dtype=dtype, **options)
    except TypeError as e:
        raise InputError(f"online SVD {method!r}: bad option ({e})") from None


def exact_top_svd(matrix: Any, rank: int, *, method: str = "svd") -> tuple[np.ndarray, np.ndarray]:
    """Top-``rank`` singular values ``(k,)`` and right singular vectors ``(k, d)`` of ``matrix`` ``(n, d)``.

    The reference for the online methods, on the whole stacked matrix, in float64, signs as in the
    module docstring. ``method="svd"``: :func:`numpy.linalg.svd` (``full_matrices=False``), accurate,
    needs a float64 copy plus ``O(min(n, d) max(n, d))`` workspace; ``k = min(rank, n, d)``.
    ``method="gram"``: eigendecomposition of the smaller Gram matrix (``M M^T`` if ``n <= d``,
    else ``M^T M``), accumulated in float64 over column/row chunks so the input (e.g. float32) is
    never copied whole; singular values lose accuracy below ``sqrt(eps) * sigma_max`` and
    rounding-level directions are dropped, so ``k = min(rank, numerical rank)``.
    """
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or rank < 1:
        raise InputError(f"rank must be an integer >= 1, got {rank!r}")
    if method == "svd":
        m = _as_matrix(matrix, "matrix")
        _, sig, vt = np.linalg.svd(m, full_matrices=False)
        k = min(rank, sig.shape[0])
        vt = vt[:k]
        return sig[:k].copy(), vt * sign_flips(vt)[:, None]
    if method != "gram":
        raise InputError(f"unknown exact SVD method {method!r}; expected 'svd' or 'gram'")
    if hasattr(matrix, "detach") and hasattr(matrix, "cpu"):  # torch: keep float32, no float64 copy
        t = matrix.detach().cpu()
        m = (t if t.is_floating_point() and t.element_size() >= 4 else t.double()).numpy()
    else:
        m = np.asarray(matrix)
    if m.ndim != 2:
        raise InputError(f"matrix: expected a 2-D (rows, dimension) array, got shape {m.shape}")
    n, d = m.shape
    if n <= d:
        chunk = max(1, (1 << 22) // max(n, 1))
        gram = np.zeros((n, n))
        for j in range(0, d, chunk):
            block = _as_matrix(m[:, j : j + chunk], "matrix")
            gram += block @ block.T
    else:
        chunk = max(1, (1 << 22) // max(d, 1))
        gram = np.zeros((d, d))
        for i in range(0, n, chunk):
            block = _as_matrix(m[i : i + chunk], f"matrix (rows from {i})")
            gram += block.T @ block
    lam, vec = np.linalg.eigh(gram)
    lam, vec = lam[::-1], vec[:, ::-1]
    sig = np.sqrt(np.maximum(lam, 0.0))
    tol = _tolerance(float(sig[0]) if sig.size else 0.0, n, d) if n else 0.0
    k = min(rank, int(np.count_nonzero(sig > max(tol, np.sqrt(FLOAT64_EPS) * (sig[0] if sig.size else 0.0)))))
    sig, vec = sig[:k], vec[:, :k]
    if n <= d:  # V^T = diag(1/s) U^T M, chunk by chunk
        vt = np.empty((k, d))
        for j in range(0, d, chunk):
            vt[:, j : j + chunk] = (vec.T @ _to_numpy(m[:, j : j + chunk], "matrix")) / sig[:, None]
    else:
        vt = vec.T.copy()
    return sig, vt * sign_flips(vt)[:, None]


def principal_angles(a: Any, b: Any) -> np.ndarray:
    """Principal angles (radians, ascending, ``(min(r1, r2),)``) between the row spaces of ``a`` and ``b``.

    ``a`` ``(r1, d)`` and ``b`` ``(r2, d)`` must have orthonormal rows (e.g. ``components_``). Cosines
    are the singular values of ``a b^T`` (Bjorck and Golub, Math. Comp. 27 (1973)); since ``arccos``
    cannot resolve angles below ~1e-8 rad, angles under pi/4 come from the sines instead, the
    singular values of the smaller set with the larger one projected out (Knyazev and Argentati,
    SIAM J. Sci. Comput. 23(6), 2002), computed from their ``(p, p)`` Gram matrix.
    """
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"principal_angles: dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    if min(a.shape[0], b.shape[0]) == 0:
        return np.zeros(0)
    small, large = (a, b) if a.shape[0] <= b.shape[0] else (b, a)
    cos = np.linalg.svd(small @ large.T, compute_uv=False)  # descending
    from_cos = np.arccos(np.clip(cos, 0.0, 1.0))  # ascending
    outside = small - (small @ large.T) @ large  # (p, d)
    sin = np.sqrt(np.clip(np.linalg.eigvalsh(outside @ outside.T), 0.0, 1.0))  # ascending
    from_sin = np.arcsin(sin)
    return np.where(from_sin < np.pi / 4, from_sin, from_cos)


def relative_singular_value_error(approx: Any, exact: Any) -> float:
    """``||approx - exact||_2 / ||exact||_2`` over the ``len(exact)`` leading values.

    ``approx`` ``(k1,)`` and ``exact`` ``(k2,)`` are descending singular values; if ``approx`` is
    shorter its missing values count as zero, extra values are ignored.
    """
    a = _to_numpy(approx, "approx").ravel()
    e = _to_numpy(exact, "exact").ravel()
    padded = np.zeros_like(e)
    n = min(a.shape[0], e.shape[0])
    padded[:n] = a[:n]
    denom = float(np.linalg.norm(e))
    if denom == 0.0:
        return float(np.linalg.norm(padded))
    return float(np.linalg.norm(padded - e) / denom)
