// The C++ CPU kernel: one pass over each sample's elements computes every head's
// residual, accumulates its squared norm and writes the gradient for pred.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "fused_eps_loss.h"

namespace unlearn_fast {

namespace {

constexpr int64_t kLanes = 16;      // elements per inner block: the compiler vectorises over it
constexpr int64_t kChunk = 4096;    // elements per task: fixed, so results do not depend on threads

// One block of kLanes (kFull) or fewer elements starting at j0.
template <bool kFull, typename scalar_t, typename acc_t>
inline void block(const scalar_t* const* x, int64_t K, int64_t M, const acc_t* c, const acc_t* gcoef,
                  int64_t j0, int64_t len, scalar_t* grad, acc_t (*sums)[kLanes]) {
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
    for (int64_t l = 0; l < (kFull ? kLanes : len); ++l) grad[j0 + l] = static_cast<scalar_t>(g[l]);
  }
}

// Elements [0, n) of one chunk: writes the gradient and each head's sum of squares.
template <typename scalar_t, typename acc_t>
void chunk(const scalar_t* const* x, int64_t K, int64_t M, const acc_t* c, const acc_t* gcoef, int64_t n,
           scalar_t* grad, acc_t* out_sums) {
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

template <typename scalar_t>
void run(const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
         const at::Tensor& weights, int64_t D, double scale, const at::Tensor& dist, at::Tensor* grad) {
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
  scalar_t* g_ptr = grad != nullptr ? grad->mutable_data_ptr<scalar_t>() : nullptr;
  std::vector<acc_t> partial(B * n_chunks * M);

  const int64_t grain = std::max<int64_t>(1, 65536 / kChunk);  // small inputs stay on one thread
  at::parallel_for(0, B * n_chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / n_chunks, start = (task % n_chunks) * kChunk;
      const acc_t* c = c_ptr + b * coeff_stride;
      acc_t gcoef[kMaxHeads];
      for (int64_t m = 0; m < M; ++m) gcoef[m] = acc_t(2 * scale) * w_ptr[b * M + m] * c[m * K];
      const scalar_t* x[kMaxTensors];
      for (int64_t k = 0; k < K; ++k) x[k] = base[k] + b * row_stride[k] + start;
      chunk<scalar_t, acc_t>(x, K, M, c, gcoef, std::min(kChunk, D - start),
                             g_ptr != nullptr ? g_ptr + b * D + start : nullptr, &partial[task * M]);
    }
  });

  // Combine the chunks in a fixed order, in double.
  acc_t* d_ptr = dist.mutable_data_ptr<acc_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t ch = 0; ch < n_chunks; ++ch) s += partial[(b * n_chunks + ch) * M + m];
      d_ptr[b * M + m] = static_cast<acc_t>(s * scale);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_cpu(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad) {
  const int64_t D = check_fused_eps_loss_inputs(pred, others, coeffs, weights);
  TORCH_CHECK(pred.device().is_cpu(), "fused_eps_loss (CPU kernel): pred is on ", pred.device());
  const int64_t B = pred.size(0), M = coeffs.size(1);
  // mean over zero elements is 0/0, as in F.mse_loss
  const double scale = sum_reduction ? 1.0 : (D == 0 ? std::nan("") : 1.0 / static_cast<double>(D));
  at::Tensor dist = at::empty({B, M}, weights.options());
  at::Tensor grad = compute_grad ? empty_grad_like(pred, D) : at::empty({0}, pred.options());
  if (B > 0 && D > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "fused_eps_loss_cpu", [&] {
      run<scalar_t>(pred, others, coeffs, weights, D, scale, dist, compute_grad ? &grad : nullptr);
    });
  } else {
    dist.fill_(B > 0 ? scale * 0.0 : 0.0);
    if (compute_grad) grad.zero_();
  }
  at::Tensor loss = (weights * dist).sum();
  return {loss, dist, grad};
}

TORCH_LIBRARY_IMPL(unlearn_fast, CPU, m) { m.impl("fused_eps_loss", &fused_eps_loss_cpu); }

}  // namespace unlearn_fast
