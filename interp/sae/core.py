"""One sparse autoencoder core; the variants differ in activation, loss and init only.

``z = (x - b_dec) @ W_enc + b_enc``, ``a = act(z)``, ``x_hat = a @ W_dec + b_dec``, with
SAELens's parameter layout (``W_enc`` is (d_in, d_sae), ``W_dec`` is (d_sae, d_in)).

Architectures (``SAEConfig.arch``):

============== ======================================== =====================================
arch           activation                               training loss
============== ======================================== =====================================
relu           ReLU                                     MSE + l1 * sum_i a_i * ||W_dec[i]||
jumprelu       z * H(z - theta), learned theta          MSE + l0 * ||a||_0 (straight-through)
ksparse        the k largest z, signs kept (no ReLU)    MSE (k may be annealed down to k)
topk           ReLU of the k largest z                  MSE + aux_alpha * AuxK(dead latents)
batchtopk      the batch's B*k largest ReLU(z)          as topk; inference: z * H(z - theta)
matryoshka     as batchtopk                             sum over prefixes m_i of MSE(first m_i)
hierarchical   ReLU of the K largest z, sorted          mean over k' <= K of MSE(first k')
_topk
============== ======================================== =====================================

A transcoder (``SAEConfig.d_out`` set) reads one space and writes another, e.g. an MLP's
input x (B, d_in) and its output y (B, d_out): ``z = x @ W_enc + b_enc`` (no input shift:
b_dec (d_out,) lives in the output space), ``y_hat = a @ W_dec + b_dec`` with W_dec
(d_sae, d_out), and for a skip transcoder (``skip``, Paulo et al. 2025) ``+ x @ W_skip``,
W_skip (d_in, d_out) zero-initialised. Every architecture below trains it the same way,
with its loss on the target y instead of x (``loss(x, y=y)``); the sparse path is the
same (only ``x @ W_enc`` is dense). An SAE is the case d_out = None.

What differs per name is one ``Architecture`` record in ``ARCHS`` (its inference rule,
AuxK, sparsity term, SAELens form, whether k means anything); the SAE asks the record and
no other module compares ``arch`` with names. ``arch`` itself stays a string: ``cfg.json``
stores it. End-to-end training (Braun et al.) is an objective of the trainer, not an
architecture here: it trains a topk or relu SAE through the model.

The top-k family keeps its codes sparse, ``values`` and ``indices`` of shape (B, K). On
its default path (``sparse_kernels=True``) only the encoder's product ``x @ W_enc`` is dense:
selection, decoding and every gradient (decoder, encoder weights, biases) cost
O(B * K * d) through ``interp.sae.kernels``. ``sparse_kernels=False`` is the plain autograd
reference (dense top-k backward, ``embedding_bag`` decode) that the tests hold it to.
Both weight matrices are stored as (d_sae, d_in) rows, so a gradient touches K rows per
token; ``W_enc`` is exposed in SAELens's (d_in, d_sae) layout as a view. Activations are
expected normalized by one scalar during training
(``fold_activation_scale`` folds it into the weights for saving).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from interp.errors import DataError, unknown
from interp.sae import kernels


@dataclass(frozen=True)
class Architecture:
    """What one ``SAEConfig.arch`` does differently from the others. The SAE, the trainer,
    the evaluation and the SAELens writer ask these fields; nothing compares names."""

    name: str
    saelens_name: str              # the SAELens architecture it is saved as (cfg.json)
    uses_k: bool = False           # keeps k latents per token: the top-k family
    rectified: bool = True         # ReLU on the kept values (ksparse keeps their signs)
    batch_topk: bool = False       # training: the batch's top B*k; inference: z H(z - theta)
    #                                with theta a running mean of the batch's cut-off
    learned_threshold: bool = False  # jumprelu: z H(z - theta), theta learned per latent
    aux_k: bool = False            # AuxK: the top k_aux dead latents fit the residual
    # the loss's sparsity term: "l1" (weighted by the decoder norms, which are then free)
    # or "l0"; None: k is the sparsity
    sparsity: Literal["l1", "l0"] | None = None
    nested_prefixes: bool = False  # matryoshka: loss summed over nested prefixes of latents
    any_k: bool = False            # hierarchical: codes sorted, loss over every k' <= K, so
    #                                one SAE serves any k' <= K (evaluated on ``k_grid``)
    tieable: bool = False          # may keep W_dec = W_enc^T throughout training
    end_to_end: bool = False       # may be trained through the model (the e2e objectives)
    saelens_reads: tuple[str, ...] = ()  # SAELens architectures loaded as this one

    @property
    def threshold_inference(self) -> bool:
        """Inference by a threshold on z (saved as SAELens's jumprelu ``threshold``)."""
        return self.batch_topk or self.learned_threshold

    @property
    def unit_norm_decoder(self) -> bool:
        return self.sparsity != "l1"  # L1 weights by the decoder norms instead

    @property
    def saelens_takes_k(self) -> bool:
        return self.saelens_name == "topk"  # SAELens's TopK SAE reads k from cfg.json


ARCHS: dict[str, Architecture] = {a.name: a for a in (
    Architecture("relu", "standard", sparsity="l1", end_to_end=True,
                 saelens_reads=("standard",)),
    Architecture("jumprelu", "jumprelu", learned_threshold=True, sparsity="l0",
                 saelens_reads=("jumprelu",)),
    Architecture("ksparse", "ksparse", uses_k=True, rectified=False, tieable=True),
    Architecture("topk", "topk", uses_k=True, aux_k=True, end_to_end=True,
                 saelens_reads=("topk",)),
    Architecture("batchtopk", "jumprelu", uses_k=True, batch_topk=True, aux_k=True,
                 saelens_reads=("batchtopk",)),
    Architecture("matryoshka", "jumprelu", uses_k=True, batch_topk=True, aux_k=True,
                 nested_prefixes=True),
    Architecture("hierarchical_topk", "topk", uses_k=True, any_k=True),
)}
ARCHITECTURES = tuple(ARCHS)
DEFAULT_ARCH = "topk"
DENSE_FREQUENCY = 0.1  # a latent active on more than 10% of tokens counts as dense
TRANSCODER_ENCODER_INIT = 0.1  # a transcoder's initial encoder scale (see __init__)
# SAELens architecture name -> ours, for folders SAELens wrote
FROM_SAELENS = {s: a.name for a in ARCHS.values() for s in a.saelens_reads}


def architecture(name: str) -> Architecture:
    """The architecture called ``name``; an unknown name is refused with the valid ones."""
    if name not in ARCHS:
        raise unknown("SAE architecture", name, ARCHITECTURES)
    return ARCHS[name]


def k_grid(k: int) -> list[int]:
    """k' values to evaluate an any-k (HierarchicalTopK) SAE at: powers of two up to K, and K."""
    grid = [2**i for i in range(int(math.log2(k)) + 1)]
    return sorted(set(grid + [k]))


class LatentCodes(NamedTuple):
    """A batch's codes without decoding: sparse ``values`` and ``indices`` (B, K) (0 marks
    padding) when the SAE keeps k latents per row, else dense ``acts`` (B, d_sae); the
    other fields are None."""

    values: torch.Tensor | None
    indices: torch.Tensor | None
    acts: torch.Tensor | None


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    arch: str = DEFAULT_ARCH        # a name of ARCHS (a string: cfg.json stores it)
    k: int = 32                     # top-k family: active latents per token (K for hierarchical)
    # ksparse
    tied: bool = False              # W_dec = W_enc^T throughout training
    k_start: int | None = None      # anneal k from k_start down to k ...
    k_anneal_steps: int = 0         # ... linearly over this many steps
    # topk / batchtopk / matryoshka: AuxK on dead latents
    k_aux: int | None = None        # default d_in // 2
    aux_alpha: float = 1 / 32
    # batchtopk / matryoshka: inference threshold as a running mean of the batch's cut-off
    threshold_momentum: float = 0.01
    # matryoshka: nested prefix sizes (ascending, last = d_sae), or sampled each batch
    prefixes: tuple[int, ...] | None = None
    n_sampled_prefixes: int = 0     # > 0: sample this many prefix sizes per batch instead
    # relu / jumprelu
    l1_coeff: float = 5.0
    l0_coeff: float = 1.0
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.05
    # init
    tied_init: bool = True          # W_enc = W_dec^T at init
    b_dec_init: str = "geometric_median"  # or "mean", "zeros"
    seed: int = 0
    # transcoders: read one hook, write another
    d_out: int | None = None        # output width; None: an SAE (output = input, width d_in)
    skip: bool = False              # transcoder: plus a learned linear skip x @ W_skip
    # provenance (written to cfg.json metadata)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prefixes is not None:
            self.prefixes = tuple(int(p) for p in self.prefixes)

    @property
    def architecture(self) -> Architecture:
        return architecture(self.arch)

    @property
    def unit_norm_decoder(self) -> bool:
        return self.architecture.unit_norm_decoder

    @property
    def transcoder(self) -> bool:
        """Reads one space and writes another: the encoder does not subtract b_dec."""
        return self.d_out is not None

    @property
    def out_dim(self) -> int:
        """The width of the reconstruction (and of b_dec): d_out, or d_in for an SAE."""
        return self.d_in if self.d_out is None else self.d_out

    def validate(self) -> "SAEConfig":
        a = self.architecture  # refuses an unknown name
        if self.d_in <= 0 or self.d_sae <= 0:
            raise DataError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if a.uses_k:
            if not 1 <= self.k <= self.d_sae:
                raise DataError(f"k={self.k} must lie in [1, d_sae={self.d_sae}] for {self.arch}")
            if self.k_start is not None and not self.k <= self.k_start <= self.d_sae:
                raise DataError(f"k_start={self.k_start} must lie in [k={self.k}, "
                                f"d_sae={self.d_sae}]")
        if self.tied and not a.tieable:
            tieable = " / ".join(n for n, t in ARCHS.items() if t.tieable)
            raise DataError(f"tied weights are an option of the {tieable} architecture only")
        if a.nested_prefixes and not self.n_sampled_prefixes:
            p = self.prefixes or (self.d_sae,)
            if list(p) != sorted(set(p)) or p[0] < 1 or p[-1] != self.d_sae:
                raise DataError(f"{self.arch} prefixes must be strictly increasing and end at "
                                f"d_sae={self.d_sae}, got {list(p)}")
        if self.d_out is not None and self.d_out <= 0:
            raise DataError(f"d_out must be positive, got {self.d_out}")
        if self.skip and not self.transcoder:
            raise DataError("skip=true is an option of transcoders (an output hook or d_out); "
                            "an SAE has no skip term")
        if self.tied and self.out_dim != self.d_in:
            raise DataError(f"tied weights need d_in == d_out, got {self.d_in} and "
                            f"{self.out_dim}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise unknown("b_dec_init", self.b_dec_init, ["geometric_median", "mean", "zeros"])
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prefixes"] = list(self.prefixes) if self.prefixes else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        names = {f.name for f in fields(cls)}
        unknown_keys = sorted(set(d) - names)
        if unknown_keys:
            raise DataError(f"unknown SAE config keys {unknown_keys}; valid: {sorted(names)}")
        return cls(**d)


@dataclass
class SAEOutput:
    """What one forward pass computed. Sparse archs fill values/indices, dense ones acts."""

    x_hat: torch.Tensor                   # (B, d_in)
    pre: torch.Tensor | None              # (B, d_sae) encoder pre-activations z (dense paths)
    values: torch.Tensor | None = None    # (B, K) active values (0 marks padding)
    indices: torch.Tensor | None = None   # (B, K) their latent ids
    acts: torch.Tensor | None = None      # (B, d_sae) dense activations
    # sparse path: z = scores[0] + scores[1], i.e. x @ W_enc (B, d_sae) and the folded bias
    scores: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def d_sae(self) -> int:
        return (self.pre if self.pre is not None else self.scores[0]).shape[1]

    def pre_activations(self) -> torch.Tensor:
        """(B, d_sae) z, formed on demand on the sparse path (no gradient)."""
        if self.pre is not None:
            return self.pre
        return self.scores[0] + self.scores[1]

    def dense(self) -> torch.Tensor:
        if self.acts is not None:
            return self.acts
        out = self.values.new_zeros(self.values.shape[0], self.d_sae)
        return out.scatter_add(1, self.indices, self.values)

    def fired_counts(self) -> torch.Tensor:
        """(d_sae,) how many rows each latent is active on."""
        if self.acts is not None:
            return (self.acts != 0).sum(0)
        active = self.values != 0
        return torch.bincount(self.indices[active], minlength=self.d_sae)

    def l0(self) -> torch.Tensor:
        """(B,) active latents per row."""
        if self.acts is not None:
            return (self.acts != 0).sum(1)
        return (self.values != 0).sum(1)


def activation_scale(sample: torch.Tensor) -> float:
    """s such that E||s x||^2 = d_in over the sample."""
    ms = float(sample.double().square().sum(1).mean())
    if ms <= 0:
        raise DataError("the activation sample is all zeros; cannot normalize it")
    return math.sqrt(sample.shape[1] / ms)


def sum_sq_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ||x_hat - x||^2 (one fused op forward and backward)."""
    return F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]


# ------------------------------------------------------------------ activations
class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta); d/dtheta by a rectangle-kernel straight-through estimator."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > theta)
        window = ((z - theta).abs() < eps / 2).to(grad.dtype)
        grad_theta = (grad * -(theta / eps) * window).sum(0)
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    """H(z - theta); d/dtheta by the same straight-through estimator (for the L0 penalty)."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((z - theta).abs() < eps / 2).to(grad.dtype)
        return torch.zeros_like(z), (grad * -(1 / eps) * window).sum(0), None


class _SparseEncode(torch.autograd.Function):
    """The selected pre-activations ``z[b, idx[b, j]]`` (already computed by the selection)
    as a function of x, the encoder rows and both biases, with O(B * K * d) gradients:

    dW_rows[i] = sum_{idx[b,j]=i} g[b,j] (x[b] - b_dec);  db_enc = the same with 1;
    db_dec = -(db_enc @ W_rows);  dx[b] = sum_j g[b,j] W_rows[idx[b,j]].
    A transcoder's encoder does not subtract b_dec: it passes a zero shift that needs no
    gradient (so no db_dec).
    """

    @staticmethod
    def forward(ctx, values, x, w_rows, b_enc, b_dec, indices):
        ctx.save_for_backward(x, w_rows, b_dec, indices)
        return values.clone()

    @staticmethod
    def backward(ctx, g):
        x, w_rows, b_dec, indices = ctx.saved_tensors
        need = ctx.needs_input_grad
        g = g.contiguous()
        grad_b_enc = torch.zeros(w_rows.shape[0], dtype=g.dtype, device=g.device)
        grad_b_enc.index_add_(0, indices.reshape(-1), g.reshape(-1))
        grad_w = grad_x = grad_b_dec = None
        if need[2]:
            grad_w = kernels.scatter_rows(torch.zeros_like(w_rows), indices, g, x, shift=b_dec)
        if need[4]:
            grad_b_dec = -(grad_b_enc @ w_rows)
        if need[1]:
            grad_x = kernels.decode(g, indices, w_rows)
        return g, grad_x, grad_w, grad_b_enc if need[3] else None, grad_b_dec, None


class _SparseDecode(torch.autograd.Function):
    """``sum_j values[b, j] * W_rows[idx[b, j]]`` with O(B * K * d) gradients.

    ``rectified``: the values come out of a ReLU, so a zero value's gradient is zeroed by
    the ReLU anyway and is not computed (AuxK's k_aux slots are mostly zeros).
    """

    @staticmethod
    def forward(ctx, values, indices, w_rows, rectified=False):
        ctx.save_for_backward(values, indices, w_rows)
        ctx.rectified = rectified
        return kernels.decode(values, indices, w_rows)

    @staticmethod
    def backward(ctx, gx):
        values, indices, w_rows = ctx.saved_tensors
        gx = gx.contiguous()
        grad_v = None
        if ctx.needs_input_grad[0]:
            grad_v = kernels.gather_dot(gx, indices, w_rows,
                                        values.detach() if ctx.rectified else None)
        grad_w = None
        if ctx.needs_input_grad[2]:
            grad_w = kernels.scatter_rows(torch.zeros_like(w_rows), indices, values.detach(), gx)
        return grad_v, None, grad_w, None


class _HierarchicalMSE(torch.autograd.Function):
    """Sum over rows and k' = 1..K of ||x0 - sum_{j<=k'} v_j W[i_j]||^2, x0 = x - b_dec;
    loss and gradients in one pass of ``kernels.hierarchical``."""

    @staticmethod
    def forward(ctx, x, b_dec, values, indices, w_rows):
        loss, gv, gw, gx0 = kernels.hierarchical(x - b_dec, values, indices, w_rows)
        ctx.save_for_backward(gv, gw, gx0)
        return loss

    @staticmethod
    def backward(ctx, g):
        gv, gw, gx0 = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (g * gx0 if need[0] else None, -g * gx0.sum(0) if need[1] else None,
                g * gv if need[2] else None, None, g * gw if need[4] else None)


def batch_topk(z: torch.Tensor, k: int, bias: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The B*k largest entries of ReLU(z + bias) over the whole batch, packed per row as
    (values, indices) of shape (B, K_max); padding has value 0 and index 0.

    Fast path: the batch's top B*k is taken among each row's top 4k candidates. It is exact
    whenever no row has all its candidates chosen (then every entry left out of a row is at
    most an unchosen candidate); otherwise the whole (B, m) matrix is searched.
    """
    b, m = z.shape
    bias = z.new_zeros(m) if bias is None else bias
    n = min(b * k, b * m)
    c = min(m, 4 * k)
    pool_v, pool_i = kernels.topk_rows(z, bias, c)
    pool_v = pool_v.relu()
    chosen = pool_v.flatten().topk(n, sorted=False).indices
    counts = torch.bincount(chosen // c, minlength=b)
    if c < m and int(counts.max()) == c:  # a row may hold more than its candidates
        pool_v, pool_i = (z + bias).relu(), None
        chosen = pool_v.flatten().topk(n, sorted=False).indices
        counts = torch.bincount(chosen // m, minlength=b)
    # compact each row's chosen entries with a row-wise top-k (no global sort)
    mask = torch.zeros(pool_v.numel(), dtype=torch.bool, device=z.device)
    mask[chosen] = True
    k_max = max(int(counts.max()), 1)
    values, pos = (pool_v * mask.view_as(pool_v)).topk(k_max, dim=1, sorted=False)
    indices = pos if pool_i is None else pool_i.gather(1, pos)
    return values, indices


# ------------------------------------------------------------------ the core
class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig, sparse_kernels: bool = True):
        super().__init__()
        self.cfg = cfg.validate()
        arch = cfg.architecture
        # False: the dense autograd reference path for the top-k family (tests, debugging)
        self.sparse_kernels = sparse_kernels
        # the sparse path's encoder product in bfloat16 (fp32 accumulate): about 2x faster
        # where the CPU has AVX512-BF16 / AMX or on a GPU; gradients and loss stay fp32
        self.encoder_dtype = torch.float32
        d, m, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = torch.randn(m, d_out, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        if not arch.unit_norm_decoder:
            w_dec = w_dec * 0.1  # small decoder norms, as the L1-weighted recipe starts
        # the encoder as rows (d_sae, d_in): W_enc is its transpose (a view); an SAE's tied
        # init W_enc = W_dec^T. A transcoder's input and output are different spaces: its
        # encoder starts small (TRANSCODER_ENCODER_INIT), so that it starts near predicting
        # b_dec (FVU about 1) rather than k random directions of unit activation (FVU 2-8)
        transcoder = cfg.transcoder and not cfg.tied
        tie = (cfg.tied_init or cfg.tied) and d_out == d and not transcoder
        w_enc = w_dec.clone() if tie else torch.randn(m, d, generator=g) / math.sqrt(d)
        self._W_enc = nn.Parameter(w_enc * TRANSCODER_ENCODER_INIT if transcoder else w_enc)
        self._W_dec = None if cfg.tied else nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if cfg.skip:  # Paulo et al. 2025: starts as a plain transcoder
            self.W_skip = nn.Parameter(torch.zeros(d, d_out))
        if cfg.transcoder:
            # the encoder's (absent) input shift, for the sparse backward; not saved
            self.register_buffer("zero_shift", torch.zeros(d), persistent=False)
            # the output's normalisation (the input's is activation_scale)
            self.register_buffer("activation_scale_out", torch.tensor(1.0))
        if arch.learned_threshold:
            self.log_threshold = nn.Parameter(
                torch.full((m,), math.log(cfg.jumprelu_init_threshold)))
        if arch.batch_topk:
            self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not estimated yet
            self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))
        self.register_buffer("activation_scale", torch.tensor(1.0))

    @property
    def architecture(self) -> Architecture:
        return self.cfg.architecture

    # -------------------------------------------------------------- parameters
    @property
    def W_enc(self) -> torch.Tensor:
        """(d_in, d_sae), SAELens's layout: a view of the stored rows."""
        return self._W_enc.T

    @property
    def W_dec(self) -> torch.Tensor:
        return self._W_enc if self.cfg.tied else self._W_dec

    def decoder_parameter(self) -> nn.Parameter:
        """The (d_sae, d_in) parameter whose rows are the decoder directions."""
        return self._W_enc if self.cfg.tied else self._W_dec

    # what the trainer asks of a dictionary (a CrossLayerTranscoder answers the same)
    @property
    def n_latents(self) -> int:
        return self.cfg.d_sae

    def unit_norm_parameters(self) -> list[nn.Parameter]:
        """The parameters whose rows the optimizer keeps on the unit sphere."""
        return [self.decoder_parameter()] if self.cfg.unit_norm_decoder else []

    def synced_buffers(self) -> list[torch.Tensor]:
        """Running statistics every data-parallel process must agree on (the batch top-k
        inference threshold)."""
        return [self.threshold] if self.architecture.batch_topk else []

    def restart_running_statistics_(self) -> None:
        """Forget the running average of the batch cut-offs: the next training-mode forward
        passes set the inference threshold to their plain mean (see ``_update_threshold``)."""
        if self.architecture.batch_topk:
            self.threshold_updates.zero_()

    @property
    def input_scale(self) -> float:
        return float(self.activation_scale)

    @torch.no_grad()
    def init_from_sample(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """The activation scales from a sample of inputs x and targets y (y is x for an
        SAE) and b_dec from the normalised targets; returns (scale, scale_out)."""
        scale = activation_scale(x)
        self.activation_scale.fill_(scale)
        scale_out = activation_scale(y) if self.cfg.transcoder else scale
        if self.cfg.transcoder:
            self.activation_scale_out.fill_(scale_out)
        self.init_b_dec(y * scale_out)
        return scale, scale_out

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if not self.cfg.unit_norm_decoder:
            return
        w = self.decoder_parameter()
        w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component along each (unit-norm) decoder direction, so
        the optimizer step moves the directions on the sphere rather than scaling them."""
        if not self.cfg.unit_norm_decoder:
            return
        p = self.decoder_parameter()
        if p.grad is None:
            return
        parallel = torch.linalg.vecdot(p.grad, p).unsqueeze(1)
        p.grad.addcmul_(parallel, p, value=-1)

    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor) -> None:
        """b_dec from a sample of (normalized) activations of the output space (a
        transcoder's output hook), by ``cfg.b_dec_init``."""
        if self.cfg.b_dec_init == "zeros":
            return
        d = self.cfg.out_dim
        if sample.ndim != 2 or sample.shape[1] != d:
            raise DataError(f"init sample has shape {tuple(sample.shape)}, expected "
                            f"(n, {'d_out' if self.cfg.transcoder else 'd_in'}={d})")
        sample = sample.float()
        self.b_dec.copy_(geometric_median(sample) if self.cfg.b_dec_init == "geometric_median"
                         else sample.mean(0))

    # -------------------------------------------------------------- forward
    def k_at(self, step: int | None) -> int:
        c = self.cfg
        if step is None or c.k_start is None or c.k_anneal_steps <= 0:
            return c.k
        frac = min(1.0, step / c.k_anneal_steps)
        return int(round(c.k_start + (c.k - c.k_start) * frac))

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_sae) z: ``(x - b_dec) @ W_enc + b_enc``; a transcoder's ``x @ W_enc + b_enc``
        (its b_dec lives in the output space)."""
        if self.cfg.transcoder:
            return x @ self.W_enc + self.b_enc
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, d_out) a skip transcoder's ``x @ W_skip``; None without a skip term."""
        return x @ self.W_skip if self.cfg.skip else None

    def _with_skip(self, y_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = self.skip_term(x)
        return y_hat if s is None else y_hat + s

    def forward(self, x: torch.Tensor, step: int | None = None) -> SAEOutput:
        """Inference and training forward. ``step`` (training only) drives k annealing;
        batch-level selection (batchtopk, matryoshka) happens in training mode only."""
        self._check_width(x)
        if self._keeps_k() and self.sparse_kernels:
            scores, bias = self._scores(x)
            values, indices = self._select(scores, bias, step)
            values = self._rectify(self._encode_selected(x, values, indices))
            return SAEOutput(self._with_skip(self.decode_sparse(values, indices), x), None,
                             values, indices, scores=(scores, bias))
        z = self.encode_pre(x)
        if self._keeps_k():
            values, indices = self._select(z, None, step)
            values = self._rectify(values)
            return SAEOutput(self._with_skip(self.decode_sparse(values, indices), x), z,
                             values, indices)
        acts = self._dense_acts(z)
        return SAEOutput(self._with_skip(self.decode_dense(acts), x), z, acts=acts)

    def inference_codes(self, x: torch.Tensor) -> LatentCodes:
        """The codes of ``x`` (B, d_in) as ``forward`` computes them in the current mode (in
        eval mode: the inference rule), without decoding: (values, indices) when k latents
        are kept per row, else dense acts (relu, jumprelu, and threshold inference)."""
        self._check_width(x)
        if self._keeps_k():
            out = self(x)
            return LatentCodes(out.values, out.indices, None)
        return LatentCodes(None, None, self._dense_acts(self.encode_pre(x)))

    def _check_width(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise DataError(f"input has d={x.shape[-1]}, this SAE takes d_in={self.cfg.d_in}")

    def _keeps_k(self) -> bool:
        """Whether this mode selects k latents per row (sparse codes): the top-k family,
        except the batch-top-k archs at inference, which apply their threshold."""
        arch = self.architecture
        return arch.uses_k and not (arch.batch_topk and not self.training)

    def _rectify(self, values: torch.Tensor) -> torch.Tensor:
        return values.relu() if self.architecture.rectified else values

    def _dense_acts(self, z: torch.Tensor) -> torch.Tensor:
        """(B, d_sae) activations of the dense rules: z H(z - theta) with the learned
        (jumprelu) or the running (batch top-k at inference) threshold, else ReLU(z)."""
        arch = self.architecture
        if arch.learned_threshold:
            return _JumpReLU.apply(z, self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)
        if arch.batch_topk:
            self._require_threshold()
            return z * (z > self.threshold)
        return z.relu()

    def _require_threshold(self) -> None:
        if float(self.threshold) < 0:
            raise DataError(f"this {self.cfg.arch} SAE has no inference threshold yet: train "
                            f"it (the threshold is estimated during training)")

    @torch.no_grad()
    def _scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse path's encoder: ``x @ W_enc`` (B, d_sae), the one dense product, and
        the bias it needs, ``b_enc - b_dec @ W_enc`` (a transcoder's: ``b_enc``), so that
        z = scores + bias."""
        w = self._W_enc.detach()
        bias = (self.b_enc.detach().clone() if self.cfg.transcoder
                else self.b_enc.detach() - w @ self.b_dec.detach())
        if self.encoder_dtype != torch.float32:
            dt = self.encoder_dtype
            return (x.detach().to(dt) @ w.to(dt).T).float(), bias
        return x.detach() @ w.T, bias

    def _encode_selected(self, x: torch.Tensor, values: torch.Tensor,
                         indices: torch.Tensor) -> torch.Tensor:
        """The selected z values, differentiable w.r.t. x and the encoder (sparse grads)."""
        shift = self.zero_shift if self.cfg.transcoder else self.b_dec
        return _SparseEncode.apply(values, x, self._W_enc, self.b_enc, shift, indices)

    def _select(self, z: torch.Tensor, bias: torch.Tensor | None, step: int | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The active (values, indices) of z (+ bias) by the architecture's rule."""
        arch = self.architecture
        if arch.batch_topk:
            values, indices = batch_topk(z, self.cfg.k, bias)
            self._update_threshold(values)
            return values, indices
        k = self.k_at(step if self.training else None)
        if bias is None:
            values, indices = z.topk(k, dim=1, sorted=False)
        else:
            values, indices = kernels.topk_rows(z, bias, k)
        if arch.any_k:  # prefixes of the code are its top-k' latents
            values, order = values.sort(dim=1, descending=True)
            indices = indices.gather(1, order)
        return values, indices

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor) -> None:
        kept = values[values > 0]
        if kept.numel() == 0:
            return
        # a plain running mean over the first 1/momentum batches, an EMA after them
        self.threshold_updates += 1
        weight = max(self.cfg.threshold_momentum, 1.0 / float(self.threshold_updates))
        self.threshold.lerp_(kept.min(), weight)

    def decode_dense(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """sum_j values[:, j] * W_dec[indices[:, j]] + b_dec, gathering only K rows."""
        if self.sparse_kernels:
            out = _SparseDecode.apply(values, indices, self.W_dec, self.architecture.rectified)
        else:
            out = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return out + self.b_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense (B, d_sae) activations, as SAELens's ``encode`` returns them."""
        was = self.training
        self.eval()
        try:
            return self.forward(x).dense()
        finally:
            self.train(was)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """(B, d_out) from dense codes; a skip transcoder's skip term needs x: ``forward``."""
        return self.decode_dense(acts)

    # -------------------------------------------------------------- losses
    def loss(self, x: torch.Tensor, step: int = 0, dead: torch.Tensor | None = None,
             generator: torch.Generator | None = None, y: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, SAEOutput, dict]:
        """Training loss on a batch of normalized activations ``x`` (B, d_in) and the target
        ``y`` (B, d_out) it should reconstruct (a transcoder's output hook; default x).

        ``dead`` (d_sae,) bool marks latents that have not fired recently (for AuxK).
        Returns (total loss, forward output, dict of float loss terms).
        """
        y = x if y is None else y
        if y.shape[-1] != self.cfg.out_dim:
            raise DataError(f"target has d={y.shape[-1]}, this dictionary writes "
                            f"d_out={self.cfg.out_dim}")
        out = self.forward(x, step)
        arch = self.architecture
        if arch.nested_prefixes:
            mse = self.matryoshka_mse(x, out, generator, y)
        elif arch.any_k:
            mse = self.hierarchical_mse(x, out, y)
        else:
            mse = sum_sq_error(out.x_hat, y)
        terms = {"mse": mse, **self.sparsity_terms(out)}
        if arch.aux_k and dead is not None and dead.any():
            terms["aux"] = self.cfg.aux_alpha * self.aux_loss(x, out, dead,
                                                              (y - out.x_hat).detach())
        total = sum(terms.values())
        return total, out, {k: float(v.detach()) for k, v in terms.items()}

    def sparsity_terms(self, out: SAEOutput) -> dict[str, torch.Tensor]:
        """The architecture's sparsity penalty on a forward output, by name: relu's L1
        ``l1_coeff * sum_i a_i ||W_dec[i]||``, jumprelu's ``l0_coeff * ||a||_0`` (straight-
        through); none for the top-k family, whose k is its sparsity."""
        sparsity = self.architecture.sparsity
        if sparsity == "l1":
            return {"l1": self.cfg.l1_coeff * (out.acts * self.W_dec.norm(dim=1)).sum(1).mean()}
        if sparsity == "l0":
            l0 = _Step.apply(out.pre, self.log_threshold.exp(), self.cfg.jumprelu_bandwidth)
            return {"l0": self.cfg.l0_coeff * l0.sum(1).mean()}
        return {}

    def aux_loss(self, x: torch.Tensor, out: SAEOutput, dead: torch.Tensor,
                 residual: torch.Tensor) -> torch.Tensor:
        """AuxK: the top k_aux dead latents reconstruct the main ``residual`` (B, d_out),
        ``y - y_hat`` detached (Gao et al.; a CLT passes the residual of the outputs this
        layer writes). k_aux defaults to half the residual's width."""
        k_aux = min(self.cfg.k_aux or self.cfg.out_dim // 2, int(dead.sum()))
        if out.scores is not None:
            scores, bias = out.scores
            values, indices = kernels.topk_rows(scores, bias.masked_fill(~dead, -math.inf), k_aux)
            values = self._encode_selected(x, values, indices)
        else:
            z_dead = out.pre.masked_fill(~dead, float("-inf"))
            values, indices = z_dead.topk(k_aux, dim=1, sorted=False)
        values = values.relu()
        recon = self.decode_sparse(values, indices) - self.b_dec
        return sum_sq_error(recon, residual)

    def prefix_sizes(self, generator: torch.Generator | None = None) -> list[int]:
        c = self.cfg
        if c.n_sampled_prefixes:
            cuts = torch.randint(1, c.d_sae, (c.n_sampled_prefixes,), generator=generator)
            return sorted(set(cuts.tolist())) + [c.d_sae]
        return list(c.prefixes or (c.d_sae,))

    def matryoshka_mse(self, x: torch.Tensor, out: SAEOutput,
                       generator: torch.Generator | None = None,
                       y: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over prefixes m_i of the MSE of the reconstruction of y (default x) from
        latents < m_i (a skip transcoder's skip term in every prefix)."""
        y = x if y is None else y
        total = x.new_zeros(())
        for m in self.prefix_sizes(generator):
            keep = out.values * (out.indices < m)
            y_hat = self._with_skip(self.decode_sparse(keep, out.indices), x)
            total = total + sum_sq_error(y_hat, y)
        return total

    def hierarchical_mse(self, x: torch.Tensor, out: SAEOutput,
                         y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over k' = 1..K of the MSE of the reconstruction of y (default x) from the
        top-k' latents.

        One pass: the gathered decoder rows scaled by their (sorted) values are summed
        cumulatively, giving every prefix reconstruction at once. A skip transcoder's
        skip term s is in every prefix: the kernel fits ``(y - s) - b_dec``, and autograd
        carries its gradient with respect to y - s on to W_skip and x (exact).
        """
        target = x if y is None else y
        s = self.skip_term(x)
        if self.sparse_kernels:
            if s is not None:
                target = target - s
            total = _HierarchicalMSE.apply(target, self.b_dec, out.values, out.indices,
                                           self.W_dec)
            return total / out.values.numel()
        contrib = out.values.unsqueeze(-1) * self.W_dec[out.indices]   # (B, K, d_out)
        y_hats = contrib.cumsum(1) + self.b_dec                          # (B, K, d_out)
        if s is not None:
            y_hats = y_hats + s.unsqueeze(1)
        return (y_hats - target.unsqueeze(1)).square().sum(-1).mean()

    def eval_k_grid(self) -> list[int]:
        """The smaller k' this SAE is also evaluated at: ``k_grid(K)`` for an any-k SAE."""
        return k_grid(self.cfg.k) if self.architecture.any_k else []

    def forward_at_k(self, x: torch.Tensor, k: int) -> SAEOutput:
        """HierarchicalTopK (or any top-k SAE) at a smaller k' <= K."""
        if not self.architecture.uses_k or not 1 <= k <= self.cfg.k:
            raise DataError(f"k'={k} must lie in [1, {self.cfg.k}] for a top-k SAE")
        if self.sparse_kernels:
            scores, bias = self._scores(x)
            values, indices = kernels.topk_rows(scores, bias, k)
            values = self._encode_selected(x, values, indices)
            z, scores = None, (scores, bias)
        else:
            z, scores = self.encode_pre(x), None
            values, indices = z.topk(k, dim=1, sorted=False)
        values = self._rectify(values)
        return SAEOutput(self._with_skip(self.decode_sparse(values, indices), x), z, values,
                         indices, scores=scores)

    # -------------------------------------------------------------- saving
    def inference_threshold(self) -> torch.Tensor | None:
        """(d_sae,) the threshold on z that inference applies (jumprelu's learned one, the
        batch top-k archs' running one on every latent), or None: SAELens's jumprelu form."""
        if self.architecture.learned_threshold:
            return self.log_threshold.detach().exp()
        if self.architecture.batch_topk:
            self._require_threshold()
            return self.threshold.detach().expand(self.cfg.d_sae)
        return None

    @torch.no_grad()
    def load_inference_threshold_(self, theta: torch.Tensor) -> None:
        """Set what ``inference_threshold`` returns from a saved (d_sae,) threshold."""
        if self.architecture.learned_threshold:
            self.log_threshold.copy_(theta.clamp_min(1e-12).log())
        elif self.architecture.batch_topk:
            if not torch.allclose(theta, theta[0].expand_as(theta)):
                raise DataError(f"a {self.cfg.arch} SAE has one threshold for all latents; "
                                f"these differ (load it as jumprelu instead)")
            self.threshold.copy_(theta[0])

    @property
    def output_scale(self) -> float:
        """The output's training normalisation: a transcoder's own, else the input's."""
        if self.cfg.transcoder:
            return float(self.activation_scale_out)
        return float(self.activation_scale)

    @torch.no_grad()
    def fold_activation_scale(self, scale: float, scale_out: float | None = None) -> None:
        """Make the SAE take raw activations x when it was trained on scale * x (and write
        raw y when trained on scale_out * y, default scale): y_hat = f(s x) / s_out, so
        W_enc *= s, W_dec and b_dec /= s_out, W_skip *= s / s_out (an SAE: b_dec is also
        its input shift, and s_out = s makes that consistent)."""
        if self.cfg.tied:
            raise DataError("a tied ksparse SAE cannot fold a scale (W_dec = W_enc^T); "
                            "untie it first with untie()")
        scale_out = scale if scale_out is None else scale_out
        if not self.cfg.transcoder and scale_out != scale:
            raise DataError("an SAE reads and writes one space: it has one activation scale")
        self._W_enc.mul_(scale)
        self._W_dec.div_(scale_out)
        self.b_dec.div_(scale_out)
        if self.cfg.skip:
            self.W_skip.mul_(scale / scale_out)
        self.activation_scale.fill_(1.0)
        if self.cfg.transcoder:
            self.activation_scale_out.fill_(1.0)

    @torch.no_grad()
    def untie(self) -> None:
        if self.cfg.tied:
            self._W_dec = nn.Parameter(self._W_enc.detach().clone())
            self.cfg.tied = False


@torch.no_grad()
def geometric_median(points: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances (Weiszfeld's algorithm)."""
    guess = points.mean(0)
    for _ in range(iters):
        dist = (points - guess).norm(dim=1).clamp_min(1e-8)
        w = 1 / dist
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - guess).norm() <= tol * max(1.0, float(guess.norm())):
            return new
        guess = new
    return guess
