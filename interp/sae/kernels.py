"""Sparse kernels for the top-k SAE family: everything but the encoder's dense product
costs O(batch * k * d).

With k << d_sae only ``x @ W_enc`` must touch every latent. Selecting the top k of each row,
decoding, the gradient of the selected values, and the weight gradients of the encoder
and decoder all work on the k selected latents of each row:

=================== ================================== =====================================
op                  computes                           used for
=================== ================================== =====================================
``topk_rows``       top k of ``z[b] + bias`` per row   selection (bias folds b_enc, b_dec)
``decode``          ``sum_j v[b,j] * W[idx[b,j]]``      reconstruction; encoder grad wrt x
``gather_dot``      ``<g[b], W[idx[b,j]]>``             gradient of the selected values
``scatter_rows``    ``out[idx[b,j]] += c[b,j] * u[b]``  weight gradients (rows of W), u
                    (less a shift, e.g. b_dec)
``hierarchical``    mean over k' of the top-k' MSE,    HierarchicalTopK's loss in one pass,
                    with its gradients                 never forming the (B, K, d) prefixes
``adam``            one Adam update, optionally with   the optimizer step in one pass; the
                    rows kept at unit norm             decoder's sphere constraint folded in
=================== ================================== =====================================

Each op has a C++ kernel (``at::parallel_for``; compiled once per machine on first use
with ``torch.utils.cpp_extension``, cached in ``TORCH_EXTENSIONS_DIR``) for fp32 CPU
tensors, and a torch fallback used on other devices and dtypes, or wherever no C++
compiler is available. The fallbacks are also the readable reference of each op.
Set ``INTERP_SPARSE_KERNELS=torch`` to force the fallbacks.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import sys
import warnings

import torch
import torch.nn.functional as F

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <functional>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <limits>
#include <vector>

using torch::Tensor;

static void check(const Tensor& t, const char* name, at::ScalarType type) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == type,
              name, " must be a contiguous CPU tensor of the kernel's dtype");
}

// Row-wise top-k of z[b] + bias (unsorted), in two passes over blocks of 16 entries.
// If tau is the k-th largest block maximum, the k largest entries all lie in the blocks
// whose maximum is >= tau (a block below tau would be beaten by k block maxima), and at
// least k entries are >= tau. So: block maxima, tau by selection among them, then the
// entries >= tau of those few blocks, and a final selection. A block is one lane of 16
// consecutive 16-wide vectors (entries g*256 + v*16 + l, v = 0..15), so the block maxima
// of a 256-entry group are 15 vertical vector maxima, with no horizontal reduction.
std::vector<Tensor> topk_rows(Tensor z, Tensor bias, int64_t k) {
  check(z, "z", at::kFloat); check(bias, "bias", at::kFloat);
  const int64_t B = z.size(0), m = z.size(1);
  TORCH_CHECK(bias.numel() == m && k >= 1 && k <= m, "topk_rows: bad bias or k");
  auto values = torch::empty({B, k}, z.options());
  auto indices = torch::empty({B, k}, z.options().dtype(at::kLong));
  const float* Z = z.data_ptr<float>();
  const float* C = bias.data_ptr<float>();
  float* V = values.data_ptr<float>();
  int64_t* I = indices.data_ptr<int64_t>();
  constexpr int64_t L = 16, G = L * L;
  const int64_t n_groups = m / G, tail = n_groups * G;  // entries >= tail: one block each
  const int64_t nb = n_groups * L + (m - tail);
  const float NEG = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
    std::vector<float> bmax(nb), sel(nb);
    std::vector<std::pair<float, int64_t>> cand;
    cand.reserve(8 * k + 64);
    auto greater = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return a.first > b.first;
    };
    float guess = NEG;
    auto push = [&](const float* row, int64_t t, float tau) {
      const float v = row[t] + C[t];
      if (v >= tau) cand.push_back({v, t});
    };
    for (int64_t b = lo; b < hi; ++b) {
      const float* row = Z + b * m;
      for (int64_t g = 0; g < n_groups; ++g) {
        float mx[L];
        const float* p = row + g * G;
        const float* c = C + g * G;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) mx[l] = p[l] + c[l];
        for (int64_t v = 1; v < L; ++v) {
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) mx[l] = std::max(mx[l], p[v * L + l] + c[v * L + l]);
        }
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) bmax[g * L + l] = mx[l] == mx[l] ? mx[l] : NEG;
      }
      for (int64_t t = tail; t < m; ++t) {
        const float v = row[t] + C[t];
        bmax[n_groups * L + (t - tail)] = v == v ? v : NEG;
      }
      // tau = the k-th largest block maximum. Rows of one batch look alike, so a recent
      // row's 3k-th largest block maximum is a floor that at least k blocks of this row
      // nearly always reach: then only the blocks above it are selected among (about 3k of
      // them instead of all); when fewer than k reach it, all of them are.
      float tau = NEG;
      if (k <= nb) {
        const int64_t k3 = std::min(3 * k, nb);
        int64_t n_sel = 0;
        if (guess > NEG) {
          int64_t t = 0;
#if defined(__AVX512F__)
          const __m512 vg = _mm512_set1_ps(guess);
          for (; t + L <= nb; t += L) {
            const __m512 v = _mm512_loadu_ps(bmax.data() + t);
            const __mmask16 hit = _mm512_cmp_ps_mask(v, vg, _CMP_GE_OQ);
            _mm512_mask_compressstoreu_ps(sel.data() + n_sel, hit, v);
            n_sel += __builtin_popcount(hit);
          }
#endif
          for (; t < nb; ++t)
            if (bmax[t] >= guess) sel[n_sel++] = bmax[t];
        }
        if (n_sel < k) {
          std::copy(bmax.begin(), bmax.end(), sel.begin());
          n_sel = nb;
        }
        int64_t upto = n_sel;
        if (n_sel >= k3) {
          std::nth_element(sel.begin(), sel.begin() + (k3 - 1), sel.begin() + n_sel,
                           std::greater<float>());
          guess = sel[k3 - 1];
          upto = k3;
        }
        std::nth_element(sel.begin(), sel.begin() + (k - 1), sel.begin() + upto,
                         std::greater<float>());
        tau = sel[k - 1];
      }
      cand.clear();
#if defined(__AVX512F__)
      // the whole row again (it is in L2 now): a compare mask per 16 entries, in order
      const __m512 vtau = _mm512_set1_ps(tau);
      int64_t t0 = 0;
      for (; t0 + L <= m; t0 += L) {
        const __m512 v = _mm512_add_ps(_mm512_loadu_ps(row + t0), _mm512_loadu_ps(C + t0));
        __mmask16 hit = _mm512_cmp_ps_mask(v, vtau, _CMP_GE_OQ);
        while (hit) {
          const int l = __builtin_ctz(hit);
          hit &= hit - 1;
          cand.push_back({row[t0 + l] + C[t0 + l], t0 + l});
        }
      }
      for (; t0 < m; ++t0) push(row, t0, tau);
#else
      for (int64_t g = 0; g < n_groups; ++g) {
        for (int64_t l = 0; l < L; ++l) {
          if (!(bmax[g * L + l] >= tau)) continue;
          for (int64_t v = 0; v < L; ++v) push(row, g * G + v * L + l, tau);
        }
      }
      for (int64_t t = tail; t < m; ++t) push(row, t, tau);
#endif
      // fewer than k candidates only when entries are -inf or NaN: pad with the others
      for (int64_t t = 0; (int64_t)cand.size() < k && t < m; ++t) {
        const float v = row[t] + C[t];
        if (!(v >= tau)) cand.push_back({v == v ? v : NEG, t});
      }
      if ((int64_t)cand.size() > k)
        std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), greater);
      for (int64_t t = 0; t < k; ++t) {
        V[b * k + t] = cand[t].first;
        I[b * k + t] = cand[t].second;
      }
    }
  });
  return {values, indices};
}

// out[b] = sum_j v[b, j] * W[idx[b, j]]
Tensor decode(Tensor v, Tensor idx, Tensor w) {
  check(v, "values", at::kFloat); check(idx, "indices", at::kLong); check(w, "W", at::kFloat);
  const int64_t B = v.size(0), K = v.size(1), d = w.size(1);
  auto out = torch::zeros({B, d}, w.options());
  const float* Vp = v.data_ptr<float>(); const int64_t* Ip = idx.data_ptr<int64_t>();
  const float* Wp = w.data_ptr<float>(); float* O = out.data_ptr<float>();
  at::parallel_for(0, B, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      float* o = O + b * d;
      for (int64_t j = 0; j < K; ++j) {
        const float c = Vp[b * K + j];
        if (c == 0.f) continue;
        const float* r = Wp + Ip[b * K + j] * d;
        for (int64_t t = 0; t < d; ++t) o[t] += c * r[t];
      }
    }
  });
  return out;
}

// out[b, j] = <g[b], W[idx[b, j]]>, or 0 where mask[b, j] == 0 (when a mask is given)
Tensor gather_dot(Tensor g, Tensor idx, Tensor w, c10::optional<Tensor> mask) {
  check(g, "g", at::kFloat); check(idx, "indices", at::kLong); check(w, "W", at::kFloat);
  const int64_t B = idx.size(0), K = idx.size(1), d = w.size(1);
  auto out = torch::empty({B, K}, w.options());
  const float* G = g.data_ptr<float>(); const int64_t* Ip = idx.data_ptr<int64_t>();
  const float* Wp = w.data_ptr<float>(); float* O = out.data_ptr<float>();
  const float* Mp = nullptr;
  if (mask.has_value()) { check(*mask, "mask", at::kFloat); Mp = mask->data_ptr<float>(); }
  at::parallel_for(0, B, 8, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const float* gb = G + b * d;
      for (int64_t j = 0; j < K; ++j) {
        if (Mp && Mp[b * K + j] == 0.f) { O[b * K + j] = 0.f; continue; }
        const float* r = Wp + Ip[b * K + j] * d;
        float s = 0.f;
#pragma omp simd reduction(+:s)
        for (int64_t t = 0; t < d; ++t) s += gb[t] * r[t];
        O[b * K + j] = s;
      }
    }
  });
  return out;
}

// out[idx[b, j]] += c[b, j] * (u[b] - shift); threads own column slices, so no two write
// one cell
void scatter_rows(Tensor out, Tensor idx, Tensor c, Tensor u, Tensor shift) {
  check(out, "out", at::kFloat); check(idx, "indices", at::kLong);
  check(c, "coef", at::kFloat); check(u, "u", at::kFloat); check(shift, "shift", at::kFloat);
  const int64_t B = idx.size(0), K = idx.size(1), d = out.size(1);
  const int64_t* Ip = idx.data_ptr<int64_t>(); const float* Cp = c.data_ptr<float>();
  const float* U = u.data_ptr<float>(); const float* S = shift.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, d, 32, [&](int64_t lo, int64_t hi) {
    for (int64_t b = 0; b < B; ++b) {
      const float* ub = U + b * d;
      for (int64_t j = 0; j < K; ++j) {
        const float cv = Cp[b * K + j];
        if (cv == 0.f) continue;
        float* o = O + Ip[b * K + j] * d;
#pragma omp simd
        for (int64_t t = lo; t < hi; ++t) o[t] += cv * (ub[t] - S[t]);
      }
    }
  });
}

// HierarchicalTopK: r_0 = x0[b], r_j = r_{j-1} - v_j W[i_j] (values sorted descending);
// loss = sum_b sum_{j=1..K} ||r_j||^2. With R_j = sum_{j' >= j} r_{j'}:
// dL/dv_j = -2 <R_j, W[i_j]>, dL/dW[i_j] += -2 v_j R_j, dL/dx0 = 2 R_1.
// Threads own column slices; the dot products are summed over slices afterwards.
std::vector<Tensor> hierarchical(Tensor x0, Tensor v, Tensor idx, Tensor w, bool grads) {
  check(x0, "x0", at::kFloat); check(v, "values", at::kFloat);
  check(idx, "indices", at::kLong); check(w, "W", at::kFloat);
  const int64_t B = v.size(0), K = v.size(1), d = w.size(1);
  const int64_t n_slices = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), d / 16));
  const int64_t width = (d + n_slices - 1) / n_slices;
  auto loss_parts = torch::zeros({n_slices}, torch::kDouble);
  auto dot_parts = torch::zeros({grads ? n_slices : 1, B, K}, w.options());
  auto grad_w = torch::zeros({grads ? w.size(0) : 1, d}, w.options());
  auto grad_x0 = torch::empty({grads ? B : 1, d}, w.options());
  const float* X = x0.data_ptr<float>(); const float* Vp = v.data_ptr<float>();
  const int64_t* Ip = idx.data_ptr<int64_t>(); const float* Wp = w.data_ptr<float>();
  double* L = loss_parts.data_ptr<double>(); float* D = dot_parts.data_ptr<float>();
  float* GW = grad_w.data_ptr<float>(); float* GX = grad_x0.data_ptr<float>();
  at::parallel_for(0, n_slices, 1, [&](int64_t s_lo, int64_t s_hi) {
    for (int64_t s = s_lo; s < s_hi; ++s) {
      const int64_t lo = s * width, hi = std::min(d, lo + width), n = hi - lo;
      if (n <= 0) continue;
      std::vector<float> r(n), R(n);
      double acc = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        const float* xb = X + b * d + lo;
        for (int64_t t = 0; t < n; ++t) r[t] = xb[t];
        for (int64_t j = 0; j < K; ++j) {
          const float c = Vp[b * K + j];
          const float* wr = Wp + Ip[b * K + j] * d + lo;
          float sq = 0.f;
#pragma omp simd reduction(+:sq)
          for (int64_t t = 0; t < n; ++t) { r[t] -= c * wr[t]; sq += r[t] * r[t]; }
          acc += sq;
        }
        if (!grads) continue;
        // walk back from r_K, accumulating R_j and restoring r_{j-1} = r_j + v_j w_j
        std::fill(R.begin(), R.end(), 0.f);
        float* dots = D + (s * B + b) * K;
        for (int64_t j = K - 1; j >= 0; --j) {
          const float c = Vp[b * K + j];
          const float* wr = Wp + Ip[b * K + j] * d + lo;
          float* gw = GW + Ip[b * K + j] * d + lo;
          float dot = 0.f;
#pragma omp simd reduction(+:dot)
          for (int64_t t = 0; t < n; ++t) {
            R[t] += r[t];
            dot += R[t] * wr[t];
            gw[t] -= 2.f * c * R[t];
            r[t] += c * wr[t];
          }
          dots[j] = -2.f * dot;
        }
        float* gx = GX + b * d + lo;
        for (int64_t t = 0; t < n; ++t) gx[t] = 2.f * R[t];
      }
      L[s] = acc;
    }
  });
  auto loss = loss_parts.sum().to(torch::kFloat);
  if (!grads) return {loss};
  return {loss, dot_parts.sum(0), grad_w, grad_x0};
}

// Adam on a parameter in one pass (torch.optim.Adam's arithmetic, no weight decay). With
// unit_rows the parameter's rows live on the unit sphere: the gradient's component along
// each row is projected out first and the row is renormalised after its update, all while
// the row is in cache. Rows are independent, so they are split across threads.
void adam(Tensor p, Tensor g, Tensor m, Tensor v, double lr, double beta1, double beta2,
          double eps, double bias_c1, double bias_c2, bool unit_rows) {
  for (auto* t : {&p, &g, &m, &v}) check(*t, "adam tensors", torch::kFloat);
  TORCH_CHECK(g.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel());
  TORCH_CHECK(!unit_rows || p.dim() == 2, "unit_rows needs a 2-D parameter");
  const int64_t n = p.numel();
  const int64_t cols = unit_rows ? p.size(1) : std::min<int64_t>(n, 4096);
  const int64_t rows = cols == 0 ? 0 : (n + cols - 1) / cols;
  float* P = p.data_ptr<float>(); const float* G = g.data_ptr<float>();
  float* M = m.data_ptr<float>(); float* V = v.data_ptr<float>();
  const float b1 = 1.f - (float)beta1, b2 = (float)beta2, nb2 = 1.f - (float)beta2;
  const float step = (float)(lr / bias_c1), sqrt_c2 = (float)std::sqrt(bias_c2);
  const float e = (float)eps;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t lo = r * cols, len = std::min(cols, n - lo);
      float* pr = P + lo; const float* gr = G + lo; float* mr = M + lo; float* vr = V + lo;
      float dot = 0.f;
      if (unit_rows) {
#pragma omp simd reduction(+:dot)
        for (int64_t t = 0; t < len; ++t) dot += gr[t] * pr[t];
      }
      float sq = 0.f;
#pragma omp simd reduction(+:sq)
      for (int64_t t = 0; t < len; ++t) {
        const float gt = gr[t] - dot * pr[t];
        const float mt = mr[t] + b1 * (gt - mr[t]);
        const float vt = b2 * vr[t] + nb2 * gt * gt;
        mr[t] = mt; vr[t] = vt;
        const float pt = pr[t] - step * mt / (std::sqrt(vt) / sqrt_c2 + e);
        pr[t] = pt; sq += pt * pt;
      }
      if (unit_rows) {
        const float inv = 1.f / std::max(std::sqrt(sq), 1e-8f);
#pragma omp simd
        for (int64_t t = 0; t < len; ++t) pr[t] *= inv;
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk_rows", &topk_rows);
  m.def("decode", &decode);
  m.def("gather_dot", &gather_dot);
  m.def("scatter_rows", &scatter_rows);
  m.def("hierarchical", &hierarchical);
  m.def("adam", &adam);
}
"""

_EXT = None
_EXT_TRIED = False


def _cpu_tag(flags: list[str]) -> str:
    """The compiled kernels use -march=native: one build per CPU model, flag set and source,
    and per environment (``sys.prefix``): the build file names the include paths of this
    environment's torch, so two virtualenvs sharing one build folder would rebuild it in
    turn, each start of the other's processes costing a compile."""
    try:
        with open("/proc/cpuinfo") as f:
            info = "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        info = platform.processor()
    key = info + _CPP + torch.__version__ + " ".join(flags) + sys.prefix
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def build(extra_flags: tuple[str, ...] = ()):
    """Compile (or load the cached build of) the kernels with these extra compiler flags."""
    from torch.utils.cpp_extension import load_inline

    # the ninja that pip installed beside this interpreter, when the venv is not activated
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # -fopenmp: at::parallel_for runs on torch's thread pool only when compiled with OpenMP
    flags = ["-O3", "-fno-math-errno", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    flags += list(extra_flags)
    return load_inline(name=f"interp_sparse_{_cpu_tag(flags)}", cpp_sources=[_CPP],
                       extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False)


def extension():
    """The compiled kernels, or None (no compiler, or INTERP_SPARSE_KERNELS=torch)."""
    global _EXT, _EXT_TRIED
    if _EXT_TRIED:
        return _EXT
    _EXT_TRIED = True
    if os.environ.get("INTERP_SPARSE_KERNELS", "").lower() == "torch":
        return None
    try:
        _EXT = build()
    except Exception as e:  # no compiler, no headers: the torch fallbacks still work
        warnings.warn(f"interp: the compiled sparse SAE kernels are unavailable ({e}); "
                      f"using the slower torch versions", stacklevel=2)
        _EXT = None
    return _EXT


def _native(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.int64)
               for t in tensors) and extension() is not None


# ------------------------------------------------------------------ the ops
def topk_rows(z: torch.Tensor, bias: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest entries of each row of ``z + bias``, unsorted."""
    if _native(z, bias) and not z.requires_grad:
        return extension().topk_rows(z.contiguous(), bias.contiguous(), int(k))
    return (z + bias).topk(k, dim=1, sorted=False)


def decode(values: torch.Tensor, indices: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, d): ``sum_j values[:, j] * w[indices[:, j]]``."""
    if _native(values, w):
        return extension().decode(values.contiguous(), indices.contiguous(), w.contiguous())
    return F.embedding_bag(indices, w, per_sample_weights=values, mode="sum")


def gather_dot(g: torch.Tensor, indices: torch.Tensor, w: torch.Tensor,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K): ``<g[b], w[indices[b, j]]>``; 0 where ``mask`` (B, K) is 0, when given."""
    if _native(g, w) and (mask is None or _native(mask)):
        return extension().gather_dot(g.contiguous(), indices.contiguous(), w.contiguous(),
                                      None if mask is None else mask.contiguous())
    out = torch.einsum("bd,bkd->bk", g, w[indices])
    return out if mask is None else out * (mask != 0)


def scatter_rows(out: torch.Tensor, indices: torch.Tensor, coef: torch.Tensor,
                 u: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """In place: ``out[indices[b, j]] += coef[b, j] * (u[b] - shift)``; returns ``out``."""
    if shift is None:
        shift = u.new_zeros(u.shape[1])
    if _native(out, coef, u, shift) and out.is_contiguous():
        extension().scatter_rows(out, indices.contiguous(), coef.contiguous(), u.contiguous(),
                                 shift.contiguous())
        return out
    u = u - shift
    rows = (coef.unsqueeze(-1) * u.unsqueeze(1)).reshape(-1, u.shape[1])
    return out.index_add_(0, indices.reshape(-1), rows.to(out.dtype))


def hierarchical(x0: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                 w: torch.Tensor, grads: bool = True):
    """Sum over rows and over k' = 1..K of ||x0 - sum_{j<=k'} v_j w[i_j]||^2.

    Returns ``loss`` or ``(loss, d/dvalues, d/dw, d/dx0)``.
    """
    if _native(x0, values, w):
        out = extension().hierarchical(x0.contiguous(), values.contiguous(),
                                       indices.contiguous(), w.contiguous(), grads)
        return out[0] if not grads else tuple(out)
    with torch.enable_grad():
        x0_ = x0.detach().requires_grad_(grads)
        v_ = values.detach().requires_grad_(grads)
        w_ = w.detach().requires_grad_(grads)
        contrib = v_.unsqueeze(-1) * w_[indices]                       # (B, K, d)
        loss = (x0_.unsqueeze(1) - contrib.cumsum(1)).square().sum()
        if not grads:
            return loss.detach()
        gv, gw, gx = torch.autograd.grad(loss, (v_, w_, x0_))
    return loss.detach(), gv, gw, gx


def adam(p: torch.Tensor, g: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
         lr: float, betas: tuple[float, float], eps: float, step: int,
         unit_rows: bool = False) -> None:
    """In place: torch.optim.Adam's update of ``p`` (step counted from 1, no weight decay).

    ``unit_rows``: the rows of ``p`` are unit vectors; the gradient's component along each
    row is removed before the update and each row is renormalised after it.
    """
    (beta1, beta2), c1, c2 = betas, 1 - betas[0] ** step, 1 - betas[1] ** step
    if _native(p, g, exp_avg, exp_avg_sq) and all(
            t.is_contiguous() for t in (p, g, exp_avg, exp_avg_sq)):
        extension().adam(p, g, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, c1, c2, unit_rows)
        return
    if unit_rows:
        g = g - torch.linalg.vecdot(g, p).unsqueeze(1) * p
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p.addcdiv_(exp_avg, (exp_avg_sq.sqrt() / math.sqrt(c2)).add_(eps), value=-lr / c1)
    if unit_rows:
        p.div_(torch.linalg.vector_norm(p, dim=1, keepdim=True).clamp_min(1e-8))
