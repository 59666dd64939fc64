// Autograd for unlearn_fast::fused_eps_loss, in C++ so a training step pays no Python
// overhead for it: the forward already computed the gradient for pred, the backward only
// scales it by grad_output and rounds it to pred's dtype (scale_saved_grad; the saved
// buffer itself is never modified, so a second backward stays correct).
#include <torch/autograd.h>

#include "fused_eps_loss.h"

namespace unlearn_fast {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FusedEpsLossFunction : public torch::autograd::Function<FusedEpsLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, std::vector<at::Tensor> others,
                               const at::Tensor& coeffs, const at::Tensor& weights, bool sum_reduction,
                               bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("unlearn_fast::fused_eps_loss", "")
                         .typed<decltype(fused_eps_loss_cpu)>();
    auto [loss, dist, grad] = op.call(pred, others, coeffs, weights, sum_reduction, compute_grad);
    ctx->mark_non_differentiable({dist, grad});
    // Only the loss gets a gradient: without this, autograd would fill a zero tensor the
    // size of the gradient buffer for its undefined grad_output on every backward.
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({grad});
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->saved_data["num_others"] = static_cast<int64_t>(others.size());
    ctx->saved_data["dtype"] = pred.scalar_type();
    return {loss, dist, grad};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    at::Tensor grad_pred;
    if (ctx->saved_data["compute_grad"].toBool() && grad_outputs[0].defined()) {
      grad_pred = scale_saved_grad(ctx->get_saved_variables()[0], grad_outputs[0],
                                   ctx->saved_data["dtype"].toScalarType());
    }
    // one entry per forward argument: pred, others, coeffs, weights, sum_reduction, compute_grad
    return {grad_pred, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_autograd(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad) {
  auto out = FusedEpsLossFunction::apply(pred, others, coeffs, weights, sum_reduction, compute_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(unlearn_fast, Autograd, m) { m.impl("fused_eps_loss", &fused_eps_loss_autograd); }

}  // namespace unlearn_fast
