// The C++ CPU kernel: one pass over each sample's elements computes every head's
// residual, accumulates its squared norm and writes the gradient for pred.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "fused_eps_loss.h"

// GCC cannot see that the element-wise loads of the half-precision path fill every lane
// of a vector (the warning is issued where the templates are instantiated).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace unlearn_fast {

namespace {

constexpr int64_t kLanes = 16;      // elements per inner block: the compiler vectorises over it
constexpr int64_t kChunk = 4096;    // elements per task: fixed, so results do not depend on threads

// One block of kLanes (kFull) or fewer elements starting at j0.
template <bool kFull, typename scalar_t, typename acc_t>
inline void block(const scalar_t* const* x, int64_t K, int64_t M, const acc_t* c, const acc_t* gcoef,
                  int64_t j0, int64_t len, acc_t* grad, acc_t (*sums)[kLanes]) {
  acc_t xv[kMaxTensors][kLanes];
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t l = 0; l < kLanes; ++l) {
      xv[k][l] = (kFull || l < len) ? static_cast<acc_t>(x[k][j0 + l]) : acc_t(0);
    }
  }
  acc_t g[kLanes] = {};
  for (int64_t m = 0; m < M; ++m) {
    acc_t r[kLanes];
    const acc_t c0 = c[m * K];
    for (int64_t l = 0; l < kLanes; ++l) r[l] = c0 * xv[0][l];
    for (int64_t k = 1; k < K; ++k) {
      const acc_t ck = c[m * K + k];
      for (int64_t l = 0; l < kLanes; ++l) r[l] += ck * xv[k][l];
    }
    for (int64_t l = 0; l < kLanes; ++l) sums[m][l] += r[l] * r[l];
    const acc_t gm = gcoef[m];
    for (int64_t l = 0; l < kLanes; ++l) g[l] += gm * r[l];
  }
  if (grad != nullptr) {
    for (int64_t l = 0; l < (kFull ? kLanes : len); ++l) grad[j0 + l] = g[l];
  }
}

// Elements [0, n) of one chunk: writes the gradient and each head's sum of squares.
// Generic version: K and M known at run time.
template <typename scalar_t, typename acc_t>
void chunk(const scalar_t* const* x, int64_t K, int64_t M, const acc_t* c, const acc_t* gcoef, int64_t n,
           acc_t* grad, acc_t* out_sums) {
  acc_t sums[kMaxHeads][kLanes] = {};
  int64_t j0 = 0;
  for (; j0 + kLanes <= n; j0 += kLanes) block<true>(x, K, M, c, gcoef, j0, kLanes, grad, sums);
  if (j0 < n) block<false>(x, K, M, c, gcoef, j0, n - j0, grad, sums);
  for (int64_t m = 0; m < M; ++m) {
    acc_t s = 0;
    for (int64_t l = 0; l < kLanes; ++l) s += sums[m][l];
    out_sums[m] = s;
  }
}

// The same with K and M fixed at compile time: every loop unrolls and the lane loops
// vectorise with the accumulators in registers (several times faster than the generic
// version for the common small K, M).
// The fixed-K, fixed-M chunk, written with GCC vector types: one 32-byte vector of the
// arithmetic type per step (8 floats or 4 doubles), accumulators in registers. The body is
// compiled twice from one definition (UF_FIXED_CHUNK below): for the baseline x86-64 ISA,
// where each vector splits into two SSE halves, and for AVX2 + FMA + F16C, picked at run
// time when the CPU has them. (An always_inline helper would be lowered for the baseline
// ISA before inlining, so the attribute must sit on the function that holds the body.)
#define UF_FIXED_CHUNK(NAME, ATTRIBUTES)                                                              \
  template <int K, int M, bool kGrad, typename scalar_t, typename acc_t>                              \
  ATTRIBUTES void NAME(const scalar_t* const* x, const acc_t* c, const acc_t* gcoef, int64_t n,        \
                       acc_t* __restrict__ grad, acc_t* out_sums) {                                   \
    typedef acc_t vec __attribute__((vector_size(32)));                                               \
    typedef acc_t unaligned_vec __attribute__((vector_size(32), aligned(alignof(acc_t))));           \
    constexpr int W = 32 / sizeof(acc_t);                                                             \
    vec cv[M][K], gv[M], acc[M];                                                                      \
    for (int m = 0; m < M; ++m) {                                                                     \
      for (int l = 0; l < W; ++l) gv[m][l] = gcoef[m];                                                \
      for (int k = 0; k < K; ++k)                                                                     \
        for (int l = 0; l < W; ++l) cv[m][k][l] = c[m * K + k];                                       \
      acc[m] = vec{};                                                                                 \
    }                                                                                                 \
    const int64_t full = n - n % W;                                                                   \
    for (int64_t j = 0; j < full; j += W) {                                                           \
      vec xv[K] = {};                                                                                 \
      _Pragma("GCC unroll 8") for (int k = 0; k < K; ++k) {                                           \
        if constexpr (std::is_same_v<scalar_t, acc_t>) { /* one unaligned vector load */              \
          xv[k] = *reinterpret_cast<const unaligned_vec*>(x[k] + j);                                  \
        } else {                                                                                      \
          for (int l = 0; l < W; ++l) xv[k][l] = static_cast<acc_t>(x[k][j + l]);                     \
        }                                                                                             \
      }                                                                                               \
      vec g{};                                                                                        \
      _Pragma("GCC unroll 8") for (int m = 0; m < M; ++m) {                                           \
        vec r = cv[m][0] * xv[0];                                                                     \
        _Pragma("GCC unroll 8") for (int k = 1; k < K; ++k) r += cv[m][k] * xv[k];                    \
        acc[m] += r * r;                                                                              \
        g += gv[m] * r;                                                                               \
      }                                                                                               \
      if constexpr (kGrad) *reinterpret_cast<unaligned_vec*>(grad + j) = g; /* acc dtype */            \
    }                                                                                                 \
    acc_t tail[M] = {};                                                                               \
    for (int64_t j = full; j < n; ++j) { /* the ragged tail, element by element */                    \
      acc_t g = 0;                                                                                    \
      for (int m = 0; m < M; ++m) {                                                                   \
        acc_t r = 0;                                                                                  \
        for (int k = 0; k < K; ++k) r += c[m * K + k] * static_cast<acc_t>(x[k][j]);                  \
        tail[m] += r * r;                                                                             \
        g += gcoef[m] * r;                                                                            \
      }                                                                                               \
      if constexpr (kGrad) grad[j] = g;                                                               \
    }                                                                                                 \
    for (int m = 0; m < M; ++m) {                                                                     \
      acc_t s = tail[m];                                                                              \
      for (int l = 0; l < W; ++l) s += acc[m][l];                                                     \
      out_sums[m] = s;                                                                                \
    }                                                                                                 \
  }

UF_FIXED_CHUNK(chunk_fixed_base, )

template <int K, int M, typename scalar_t, typename acc_t>
void chunk_fixed(const scalar_t* const* x, int64_t, int64_t, const acc_t* c, const acc_t* gcoef, int64_t n,
                 acc_t* grad, acc_t* out_sums) {
  if (grad != nullptr) {
    chunk_fixed_base<K, M, true>(x, c, gcoef, n, grad, out_sums);
  } else {
    chunk_fixed_base<K, M, false>(x, c, gcoef, n, grad, out_sums);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define UF_HAS_AVX2_CLONE 1
UF_FIXED_CHUNK(chunk_fixed_avx2_body, __attribute__((target("avx2,fma,f16c"))))

template <int K, int M, typename scalar_t, typename acc_t>
void chunk_fixed_avx2(const scalar_t* const* x, int64_t, int64_t, const acc_t* c, const acc_t* gcoef, int64_t n,
                      acc_t* grad, acc_t* out_sums) {
  if (grad != nullptr) {
    chunk_fixed_avx2_body<K, M, true>(x, c, gcoef, n, grad, out_sums);
  } else {
    chunk_fixed_avx2_body<K, M, false>(x, c, gcoef, n, grad, out_sums);
  }
}

bool cpu_has_avx2() {
  __builtin_cpu_init();  // the CPU model is not initialised yet when a library loads early
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}
#endif
#undef UF_FIXED_CHUNK

template <typename scalar_t, typename acc_t>
using ChunkFn = void (*)(const scalar_t* const*, int64_t, int64_t, const acc_t*, const acc_t*, int64_t, acc_t*,
                         acc_t*);

// The compile-time version for K <= 4, M <= 3; the generic one otherwise.
template <typename scalar_t, typename acc_t>
ChunkFn<scalar_t, acc_t> pick_chunk(int64_t K, int64_t M) {
#ifdef UF_HAS_AVX2_CLONE
  const bool avx2 = cpu_has_avx2();
#else
  const bool avx2 = false;
#endif
#ifdef UF_HAS_AVX2_CLONE
#define UF_CASE(k, m)                                                                     \
  if (K == k && M == m)                                                                   \
    return avx2 ? &chunk_fixed_avx2<k, m, scalar_t, acc_t> : &chunk_fixed<k, m, scalar_t, acc_t>;
#else
#define UF_CASE(k, m) \
  if (K == k && M == m) return &chunk_fixed<k, m, scalar_t, acc_t>;
#endif
  UF_CASE(1, 1) UF_CASE(1, 2) UF_CASE(1, 3)
  UF_CASE(2, 1) UF_CASE(2, 2) UF_CASE(2, 3)
  UF_CASE(3, 1) UF_CASE(3, 2) UF_CASE(3, 3)
  UF_CASE(4, 1) UF_CASE(4, 2) UF_CASE(4, 3)
#undef UF_CASE
  return &chunk<scalar_t, acc_t>;
}

template <typename scalar_t>
void run(const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
         const at::Tensor& weights, int64_t D, double scale, const at::Tensor& dist, const at::Tensor& loss,
         at::Tensor* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = pred.size(0), K = coeffs.size(2), M = coeffs.size(1);
  const int64_t coeff_stride = coeffs.size(0) == 1 ? 0 : M * K;
  const int64_t n_chunks = (D + kChunk - 1) / kChunk;

  std::vector<const scalar_t*> base(K);
  std::vector<int64_t> row_stride(K);
  for (int64_t k = 0; k < K; ++k) {
    const at::Tensor& t = k == 0 ? pred : others[k - 1];
    base[k] = t.const_data_ptr<scalar_t>();
    row_stride[k] = t.stride(0);
  }
  const acc_t* c_ptr = coeffs.const_data_ptr<acc_t>();
  const acc_t* w_ptr = weights.const_data_ptr<acc_t>();
  acc_t* g_ptr = grad != nullptr ? grad->mutable_data_ptr<acc_t>() : nullptr;
  std::vector<acc_t> partial(B * n_chunks * M);

  const auto chunk_fn = pick_chunk<scalar_t, acc_t>(K, M);
  const int64_t grain = std::max<int64_t>(1, 65536 / kChunk);  // small inputs stay on one thread
  at::parallel_for(0, B * n_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, start = (task % n_chunks) * kChunk;
      const acc_t* c = c_ptr + b * coeff_stride;
      acc_t gcoef[kMaxHeads];
      for (int64_t m = 0; m < M; ++m) gcoef[m] = acc_t(2 * scale) * w_ptr[b * M + m] * c[m * K];
      const scalar_t* x[kMaxTensors];
      for (int64_t k = 0; k < K; ++k) x[k] = base[k] + b * row_stride[k] + start;
      chunk_fn(x, K, M, c, gcoef, std::min(kChunk, D - start), g_ptr != nullptr ? g_ptr + b * D + start : nullptr,
               &partial[task * M]);
    }
  });

  // Combine the chunks in a fixed order, in double; the loss from the rounded dist, the same way.
  acc_t* d_ptr = dist.mutable_data_ptr<acc_t>();
  double total = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t ch = 0; ch < n_chunks; ++ch) s += partial[(b * n_chunks + ch) * M + m];
      const acc_t d = static_cast<acc_t>(s * scale);
      d_ptr[b * M + m] = d;
      total += static_cast<double>(w_ptr[b * M + m]) * static_cast<double>(d);
    }
  }
  *loss.mutable_data_ptr<acc_t>() = static_cast<acc_t>(total);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_cpu(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad) {
  TORCH_CHECK(pred.device().is_cpu(), "fused_eps_loss (CPU kernel): pred is on ", pred.device());
  return fused_eps_loss_frame(pred, others, coeffs, weights, sum_reduction, compute_grad,
                              [&](int64_t D, double scale, const at::Tensor& dist, const at::Tensor& loss,
                                  at::Tensor* grad) {
                                AT_DISPATCH_FLOATING_TYPES_AND2(
                                    at::kHalf, at::kBFloat16, pred.scalar_type(), "fused_eps_loss_cpu",
                                    [&] { run<scalar_t>(pred, others, coeffs, weights, D, scale, dist, loss, grad); });
                              });
}

TORCH_LIBRARY_IMPL(unlearn_fast, CPU, m) { m.impl("fused_eps_loss", &fused_eps_loss_cpu); }

}  // namespace unlearn_fast
