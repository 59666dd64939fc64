// The op contract shared by the CPU and CUDA kernels (see unlearn_fast/reference.py for
// the specification and unlearn_fast/ops.py for the Python side that prepares inputs).
//
//   fused_eps_loss(pred, others, coeffs, weights, sum_reduction, compute_grad)
//       -> (loss, dist, grad_pred)
//
// Inputs, as prepared by unlearn_fast/ops.py (re-checked here with TORCH_CHECK):
//   pred     [B, ...] float16 / bfloat16 / float32 / float64.
//   others   K-1 tensors, same shape, dtype and device as pred.
//            Every tensor's per-sample block (dims 1..) is dense in memory and has the
//            same inner strides as pred; the batch stride is free. So element j of
//            sample b lives at  data_ptr + b * stride(0) + j  for j in [0, D), in the
//            same order for every tensor: the loss is a sum over elements, so the
//            order within a sample does not matter as long as it is shared.
//   coeffs   [Bc, M, K] contiguous, Bc in {1, B} (1: shared by all samples), acc dtype.
//   weights  [B, M] contiguous, acc dtype.
//   acc dtype = float64 for float64 inputs, float32 otherwise; all arithmetic in it.
// Outputs:
//   loss     0-dim, acc dtype:  sum_{b,m} weights[b,m] * dist[b,m]
//   dist     [B, M] contiguous, acc dtype:  scale * sum_j r_m[b,j]^2,
//            r_m[b,j] = sum_k coeffs[b,m,k] * X_k[b,j]  (X_0 = pred, X_k = others[k-1]),
//            scale = 1 (sum_reduction) or 1/D (mean).
//   grad_pred  if compute_grad: pred's shape, the acc dtype, pred's inner strides, batch
//            stride D:  sum_m 2 * scale * weights[b,m] * coeffs[b,m,0] * r_m[b,j].
//            Otherwise an empty tensor [0] of the acc dtype. It stays in the acc dtype
//            so the backward rounds to pred's dtype once, after scaling by grad_output:
//            a float16 gradient of a mean over D elements is ~2/D, below float16's
//            normal range before a loss scale (GradScaler's 65536) lifts it.
// Backward (scale_saved_grad): grad_output * grad_pred, rounded once to pred's dtype.
// Partial sums are combined in a fixed order, independent of the thread count, so
// results are bit-identical from run to run.
#pragma once
#include <torch/all.h>
#include <functional>
#include <vector>

namespace unlearn_fast {

constexpr int64_t kMaxTensors = 8;  // K <= 8
constexpr int64_t kMaxHeads = 8;    // M <= 8

// Checks shared by every backend; returns D, the elements per sample.
int64_t check_fused_eps_loss_inputs(const at::Tensor& pred, const std::vector<at::Tensor>& others,
                                    const at::Tensor& coeffs, const at::Tensor& weights);

// The gradient buffer: pred's inner strides, batch stride D (dense), the acc dtype.
at::Tensor empty_grad_like(const at::Tensor& pred, int64_t D);

// The backward: saved (the acc-dtype gradient for a unit grad_output) times grad_output,
// rounded once into `dtype` (pred's). A float32 `saved` with grad_output == 1 on the CPU is
// returned as it is (no pass over memory); on a GPU the multiply always runs (reading the
// value would be a host sync).
at::Tensor scale_saved_grad(const at::Tensor& saved, const at::Tensor& grad_output, at::ScalarType dtype);

// What a device kernel does for B > 0, D > 0: fill dist [B, M], the 0-dim loss (from dist,
// in a fixed order, in the same launch as dist: no separate weights * dist, sum), and grad
// when not null.
using KernelLauncher =
    std::function<void(int64_t D, double scale, const at::Tensor& dist, const at::Tensor& loss, at::Tensor* grad)>;

// The frame every device kernel shares: the checks, the outputs and the empty cases (B = 0,
// D = 0); `launch` runs the kernel itself.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_frame(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad, const KernelLauncher& launch);

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_cpu(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad);

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_cuda(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad);

}  // namespace unlearn_fast
