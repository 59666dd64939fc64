// The op library: the schema, the checks every backend shares, and the Python module
// stub that lets `import unlearn_fast._C` load the library (which registers the ops).
#include <Python.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "fused_eps_loss.h"

extern "C" {
// An empty module: importing it runs the static TORCH_LIBRARY registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace unlearn_fast {

namespace {

// True when the block of one sample (dims 1..) covers a dense run of memory.
bool sample_block_dense(const at::Tensor& t) {
  if (t.numel() == 0) return true;  // nothing to read: any strides will do
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims that matter
  for (int64_t d = 1; d < t.dim(); ++d) {
    if (t.size(d) != 1) dims.emplace_back(t.stride(d), t.size(d));
  }
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}

bool same_inner_strides(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 1; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace

int64_t check_fused_eps_loss_inputs(const at::Tensor& pred, const std::vector<at::Tensor>& others,
                                    const at::Tensor& coeffs, const at::Tensor& weights) {
  TORCH_CHECK(pred.dim() >= 1, "fused_eps_loss: pred must have a batch dimension, got a 0-dim tensor");
  const auto dtype = pred.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
              "fused_eps_loss: pred must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(sample_block_dense(pred),
              "fused_eps_loss: pred's per-sample block must be dense (unlearn_fast.ops prepares this)");
  const int64_t B = pred.size(0);
  const int64_t D = B == 0 ? pred.numel() : pred.numel() / B;
  const int64_t K = static_cast<int64_t>(others.size()) + 1;
  TORCH_CHECK(K <= kMaxTensors, "fused_eps_loss: at most ", kMaxTensors - 1, " others, got ", K - 1);
  for (size_t i = 0; i < others.size(); ++i) {
    const auto& o = others[i];
    TORCH_CHECK(o.sizes() == pred.sizes(), "fused_eps_loss: others[", i, "] has shape ", o.sizes(),
                ", expected pred's shape ", pred.sizes());
    TORCH_CHECK(o.scalar_type() == dtype, "fused_eps_loss: others[", i, "] has dtype ", o.scalar_type(),
                ", expected pred's dtype ", dtype);
    TORCH_CHECK(o.device() == pred.device(), "fused_eps_loss: others[", i, "] is on ", o.device(),
                ", expected pred's device ", pred.device());
    TORCH_CHECK(sample_block_dense(o) && same_inner_strides(o, pred), "fused_eps_loss: others[", i,
                "] must share pred's per-sample memory layout (unlearn_fast.ops prepares this)");
  }
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(coeffs.dim() == 3 && (coeffs.size(0) == 1 || coeffs.size(0) == B) && coeffs.size(2) == K,
              "fused_eps_loss: coeffs must be [1 or B, M, K] = [1 or ", B, ", M, ", K, "], got ", coeffs.sizes());
  const int64_t M = coeffs.size(1);
  TORCH_CHECK(M >= 1 && M <= kMaxHeads, "fused_eps_loss: 1 to ", kMaxHeads, " heads, got ", M);
  TORCH_CHECK(coeffs.scalar_type() == acc && coeffs.is_contiguous() && coeffs.device() == pred.device(),
              "fused_eps_loss: coeffs must be contiguous ", acc, " on ", pred.device());
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == B && weights.size(1) == M,
              "fused_eps_loss: weights must be [B, M] = [", B, ", ", M, "], got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == acc && weights.is_contiguous() && weights.device() == pred.device(),
              "fused_eps_loss: weights must be contiguous ", acc, " on ", pred.device());
  return D;
}

at::Tensor empty_grad_like(const at::Tensor& pred, int64_t D) {
  std::vector<int64_t> strides(pred.strides().begin(), pred.strides().end());
  strides[0] = D;
  const auto acc = pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty_strided(pred.sizes(), strides, pred.options().dtype(acc));
}

namespace {

// A CPU tensor holding one real value (not a fake or functional tensor being traced by
// torch.compile, and no Python dispatch mode active): reading it costs nothing.
bool readable_cpu_scalar(const at::Tensor& t) {
  if (!t.device().is_cpu() || t.numel() != 1 || c10::impl::dispatch_mode_enabled()) return false;
  const auto keys = t.key_set();
  return !keys.has(c10::DispatchKey::Python) && !keys.has(c10::DispatchKey::Functionalize);
}

}  // namespace

at::Tensor scale_saved_grad(const at::Tensor& saved, const at::Tensor& grad_output, at::ScalarType dtype) {
  if (saved.scalar_type() == dtype && saved.device().is_cpu() && readable_cpu_scalar(grad_output) &&
      grad_output.item<double>() == 1.0) {
    return saved;  // loss.backward(): the gradient is the saved buffer itself
  }
  at::Tensor out = at::empty_strided(saved.sizes(), saved.strides(), saved.options().dtype(dtype));
  return at::mul_out(out, saved, grad_output);  // computed in the acc dtype, rounded once
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_frame(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad, const KernelLauncher& launch) {
  const int64_t D = check_fused_eps_loss_inputs(pred, others, coeffs, weights);
  const int64_t B = pred.size(0), M = coeffs.size(1);
  // mean over zero elements is 0/0, as in F.mse_loss
  const double scale = sum_reduction ? 1.0 : (D == 0 ? std::nan("") : 1.0 / static_cast<double>(D));
  at::Tensor dist = at::empty({B, M}, weights.options());
  at::Tensor grad = compute_grad ? empty_grad_like(pred, D) : at::empty({0}, weights.options());
  if (B > 0 && D > 0) {
    at::Tensor loss = at::empty({}, weights.options());
    launch(D, scale, dist, loss, compute_grad ? &grad : nullptr);
    return {loss, dist, grad};
  }
  dist.fill_(B > 0 ? scale * 0.0 : 0.0);
  if (compute_grad) grad.zero_();
  return {(weights * dist).sum(), dist, grad};
}

TORCH_LIBRARY(unlearn_fast, m) {
  m.def(
      "fused_eps_loss(Tensor pred, Tensor[] others, Tensor coeffs, Tensor weights, bool sum_reduction, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");
}

}  // namespace unlearn_fast
