// The CUDA kernel. Latents are few samples of many elements, so the grid covers
// (sample, chunk of the sample): each block reads its chunk of every tensor once, computes
// every head's residual in registers, writes pred's gradient and one partial sum of squares
// per head. A second kernel, one block, adds the partials of each sample in a fixed order
// (no atomics) and forms the loss: two launches a call, bit-identical results run to run.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

// The header includes torch/all.h, whose nn headers name a variable `module`; EDG warns
// about that in C++20 (#3189). Not our code, so silenced here.
#pragma nv_diag_suppress 3189
#include "../fused_eps_loss.h"
#pragma nv_diag_default 3189

namespace unlearn_fast {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// A fixed block count to aim for, not read from the device: the chunking (and so the
// summation order) depends only on B and D, so results agree across GPUs too.
constexpr int64_t kTargetBlocks = 2048;
constexpr int64_t kMaxChunk = int64_t(1) << 24;  // keeps in-chunk offsets in int

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Passed by value: K base pointers and batch strides, in elements.
template <typename scalar_t, typename acc_t>
struct Params {
  const scalar_t* x[kMaxTensors];
  int64_t row_stride[kMaxTensors];
  acc_t* grad;  // batch stride D, acc dtype; nullptr without compute_grad
  const acc_t* coeffs;
  int64_t coeff_stride;  // 0 when the coefficients are shared by all samples
  const acc_t* weights;
  acc_t* partial;  // [B, n_chunks, M]
  int64_t D;
  int64_t chunk;
  int n_chunks;
  int K;
  int M;
  acc_t two_scale;
};

// N elements: each head's residual, its square into sums[m], and the gradient into g.
// Loops run to the compile-time bounds with guards so every array stays in registers.
template <int kMaxK, int kMaxM, int N, typename acc_t>
__device__ __forceinline__ void heads(const acc_t (&xa)[kMaxK][N], int K, int M,
                                      const acc_t (*s_c)[kMaxTensors], const acc_t* s_g,
                                      acc_t (&sums)[kMaxM], acc_t (&g)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) g[i] = acc_t(0);
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) {
    if (m < M) {
      acc_t r[N];
      const acc_t c0 = s_c[m][0];
#pragma unroll
      for (int i = 0; i < N; ++i) r[i] = c0 * xa[0][i];
#pragma unroll
      for (int k = 1; k < kMaxK; ++k) {
        if (k < K) {
          const acc_t ck = s_c[m][k];
#pragma unroll
          for (int i = 0; i < N; ++i) r[i] += ck * xa[k][i];
        }
      }
      acc_t s = sums[m];
#pragma unroll
      for (int i = 0; i < N; ++i) s += r[i] * r[i];
      sums[m] = s;
      const acc_t gm = s_g[m];
#pragma unroll
      for (int i = 0; i < N; ++i) g[i] += gm * r[i];
    }
  }
}

// One block per (sample, chunk). kVec elements per load: 16 bytes when every pointer and
// stride allows it, 1 otherwise. K <= kMaxK and M <= kMaxM: the registers are sized for
// the bound, so the common small case (K, M <= 4) gets its own lighter instantiation.
template <typename scalar_t, int kVec, int kMaxK, int kMaxM>
__global__ void __launch_bounds__(kThreads)
    fused_eps_loss_kernel(const Params<scalar_t, at::opmath_type<scalar_t>> p) {
  using acc_t = at::opmath_type<scalar_t>;
  using VecT = Vec<scalar_t, kVec>;
  using GradVecT = Vec<acc_t, kVec>;  // the gradient is stored in the acc dtype
  // Vectors per thread per tensor in flight: K loads already overlap, so only few tensors
  // need a second vector to hide memory latency (and more would cost occupancy).
  constexpr int kIlp = kMaxK <= 4 ? 2 : 1;
  constexpr int kSub = kVec < 4 ? kVec : 4;  // elements converted to acc_t at a time
  __shared__ acc_t s_c[kMaxHeads][kMaxTensors];
  __shared__ acc_t s_g[kMaxHeads];
  __shared__ acc_t s_red[kWarps][kMaxHeads];

  const int K = p.K, M = p.M;
  const int64_t b = blockIdx.x / p.n_chunks;
  const int64_t start = (blockIdx.x % p.n_chunks) * p.chunk;
  const int n = static_cast<int>(std::min<int64_t>(p.chunk, p.D - start));

  const acc_t* c = p.coeffs + b * p.coeff_stride;
  for (int i = threadIdx.x; i < kMaxHeads * kMaxTensors; i += kThreads) {
    const int m = i / kMaxTensors, k = i % kMaxTensors;
    s_c[m][k] = (m < M && k < K) ? c[m * K + k] : acc_t(0);
  }
  if (static_cast<int>(threadIdx.x) < M) {
    const int m = threadIdx.x;
    s_g[m] = p.two_scale * p.weights[b * M + m] * c[m * K];  // same order as the CPU kernel
  }
  __syncthreads();

  // int64 offsets: b * stride can exceed 2^31; in-chunk offsets fit in int.
  const scalar_t* x[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) x[k] = k < K ? p.x[k] + b * p.row_stride[k] + start : nullptr;
  acc_t* const grad = p.grad != nullptr ? p.grad + b * p.D + start : nullptr;

  acc_t sums[kMaxM];
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) sums[m] = acc_t(0);

  const int n_vec = n / kVec;
  for (int v0 = threadIdx.x; v0 < n_vec; v0 += kThreads * kIlp) {
    // Issue every load first, then compute.
    VecT raw[kIlp][kMaxK];
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int v = v0 + u * kThreads;
      if (v < n_vec) {
#pragma unroll
        for (int k = 0; k < kMaxK; ++k) {
          if (k < K) raw[u][k] = reinterpret_cast<const VecT*>(x[k])[v];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kIlp; ++u) {
      const int v = v0 + u * kThreads;
      if (v < n_vec) {
        GradVecT out;
#pragma unroll
        for (int i0 = 0; i0 < kVec; i0 += kSub) {
          acc_t xa[kMaxK][kSub];
#pragma unroll
          for (int k = 0; k < kMaxK; ++k) {
#pragma unroll
            for (int i = 0; i < kSub; ++i) xa[k][i] = k < K ? static_cast<acc_t>(raw[u][k].v[i0 + i]) : acc_t(0);
          }
          acc_t g[kSub];
          heads<kMaxK, kMaxM>(xa, K, M, s_c, s_g, sums, g);
#pragma unroll
          for (int i = 0; i < kSub; ++i) out.v[i0 + i] = g[i];
        }
        if (grad != nullptr) reinterpret_cast<GradVecT*>(grad)[v] = out;
      }
    }
  }
  // The last chunk's tail when D is not a multiple of kVec.
  if constexpr (kVec > 1) {
    for (int j = n_vec * kVec + threadIdx.x; j < n; j += kThreads) {
      acc_t xa[kMaxK][1];
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) xa[k][0] = k < K ? static_cast<acc_t>(x[k][j]) : acc_t(0);
      acc_t g[1];
      heads<kMaxK, kMaxM>(xa, K, M, s_c, s_g, sums, g);
      if (grad != nullptr) grad[j] = g[0];
    }
  }

  // Block reduction in a fixed order: warp shuffles, then warp partials in warp order.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) {
    if (m < M) {
      acc_t s = sums[m];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) s_red[warp][m] = s;
    }
  }
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < M) {
    acc_t s = acc_t(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += s_red[w][threadIdx.x];
    p.partial[static_cast<int64_t>(blockIdx.x) * M + threadIdx.x] = s;
  }
}

// One block: warp w handles the (sample, head) pairs w, w + kReduceWarps, ...: it adds a
// pair's chunk partials in double in a fixed order, like the CPU kernel, applies the scale,
// writes dist and accumulates weights * dist; the warps' loss partials are then added in
// warp order. So the loss needs no further kernels, and results are bit-identical run to run.
constexpr int kReduceThreads = 256;
constexpr int kReduceWarps = kReduceThreads / 32;

template <typename acc_t>
__global__ void __launch_bounds__(kReduceThreads)
    reduce_chunks_kernel(const acc_t* __restrict__ partial, const acc_t* __restrict__ weights,
                         acc_t* __restrict__ dist, acc_t* __restrict__ loss, int64_t BM, int M, int n_chunks,
                         double scale) {
  __shared__ double s_loss[kReduceWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double warp_loss = 0;  // meaningful in lane 0
  for (int64_t pair = warp; pair < BM; pair += kReduceWarps) {
    const int64_t b = pair / M, m = pair % M;
    double s = 0;
    for (int ch = lane; ch < n_chunks; ch += 32) s += static_cast<double>(partial[(b * n_chunks + ch) * M + m]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) {
      const acc_t d = static_cast<acc_t>(s * scale);
      dist[pair] = d;
      warp_loss += static_cast<double>(weights[pair]) * static_cast<double>(d);
    }
  }
  if (lane == 0) s_loss[warp] = warp_loss;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
#pragma unroll
    for (int w = 0; w < kReduceWarps; ++w) total += s_loss[w];
    *loss = static_cast<acc_t>(total);
  }
}

template <typename scalar_t>
bool aligned_for(const void* ptr, int64_t stride, int vec) {
  return reinterpret_cast<uintptr_t>(ptr) % (sizeof(scalar_t) * vec) == 0 && stride % vec == 0;
}

template <typename scalar_t, int kVec>
void launch(const Params<scalar_t, at::opmath_type<scalar_t>>& p, int64_t blocks, cudaStream_t stream) {
  if (p.K <= 4 && p.M <= 4) {
    fused_eps_loss_kernel<scalar_t, kVec, 4, 4><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    fused_eps_loss_kernel<scalar_t, kVec, kMaxTensors, kMaxHeads><<<blocks, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The instantiation for `vec` elements per load, a power of two <= kVec: one tensor whose
// pointer or batch stride allows only 8 bytes costs the others their 16-byte loads, not
// every vector load.
template <typename scalar_t, int kVec>
void launch_vec(const Params<scalar_t, at::opmath_type<scalar_t>>& p, int vec, int64_t blocks, cudaStream_t stream) {
  if constexpr (kVec > 1) {
    if (vec < kVec) return launch_vec<scalar_t, kVec / 2>(p, vec, blocks, stream);
  }
  launch<scalar_t, kVec>(p, blocks, stream);
}

// The widest power-of-two width <= max_vec that every pointer and batch stride allows.
template <typename T>
int widest_vec(const void* ptr, int64_t stride, int max_vec) {
  int vec = max_vec;
  while (vec > 1 && !aligned_for<T>(ptr, stride, vec)) vec /= 2;
  return vec;
}

template <typename scalar_t>
void run(const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
         const at::Tensor& weights, int64_t D, double scale, const at::Tensor& dist, const at::Tensor& loss,
         at::Tensor* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVecMax = 16 / sizeof(scalar_t);
  const int64_t B = pred.size(0), K = coeffs.size(2), M = coeffs.size(1);

  Params<scalar_t, acc_t> p{};
  int vec = kVecMax;
  for (int64_t k = 0; k < K; ++k) {
    const at::Tensor& t = k == 0 ? pred : others[k - 1];
    p.x[k] = t.const_data_ptr<scalar_t>();
    p.row_stride[k] = t.stride(0);
    vec = widest_vec<scalar_t>(p.x[k], B > 1 ? p.row_stride[k] : 0, vec);
  }
  p.grad = grad != nullptr ? grad->mutable_data_ptr<acc_t>() : nullptr;
  if (grad != nullptr) vec = widest_vec<acc_t>(p.grad, B > 1 ? D : 0, vec);

  // Chunks are whole tiles of kThreads vectors (so chunk starts keep the alignment), sized
  // to give about kTargetBlocks blocks in all.
  const int64_t unit = int64_t(kThreads) * vec;
  const int64_t per_sample = std::max<int64_t>(1, (kTargetBlocks + B - 1) / B);
  int64_t chunk = (D + per_sample - 1) / per_sample;
  chunk = std::min(std::max(unit, (chunk + unit - 1) / unit * unit), kMaxChunk);
  const int64_t n_chunks = (D + chunk - 1) / chunk;
  const int64_t blocks = B * n_chunks;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "fused_eps_loss (CUDA kernel): input too large (",
              B, " samples of ", D, " elements)");

  at::Tensor partial = at::empty({B, n_chunks, M}, dist.options());
  p.coeffs = coeffs.const_data_ptr<acc_t>();
  p.coeff_stride = coeffs.size(0) == 1 ? 0 : M * K;
  p.weights = weights.const_data_ptr<acc_t>();
  p.partial = partial.mutable_data_ptr<acc_t>();
  p.D = D;
  p.chunk = chunk;
  p.n_chunks = static_cast<int>(n_chunks);
  p.K = static_cast<int>(K);
  p.M = static_cast<int>(M);
  p.two_scale = static_cast<acc_t>(2 * scale);

  // c10's stream (what at::cuda::getCurrentCUDAStream returns): ATen/cuda/CUDAContext.h
  // would pull in cuSPARSE/cuBLAS headers that a bare nvcc toolkit lacks.
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  launch_vec<scalar_t, kVecMax>(p, vec, blocks, stream);

  reduce_chunks_kernel<acc_t><<<1, kReduceThreads, 0, stream>>>(
      p.partial, p.weights, dist.mutable_data_ptr<acc_t>(), loss.mutable_data_ptr<acc_t>(), B * M, p.M,
      p.n_chunks, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_eps_loss_cuda(
    const at::Tensor& pred, const std::vector<at::Tensor>& others, const at::Tensor& coeffs,
    const at::Tensor& weights, bool sum_reduction, bool compute_grad) {
  TORCH_CHECK(pred.is_cuda(), "fused_eps_loss (CUDA kernel): pred is on ", pred.device());
  const c10::cuda::CUDAGuard guard(pred.device());
  return fused_eps_loss_frame(pred, others, coeffs, weights, sum_reduction, compute_grad,
                              [&](int64_t D, double scale, const at::Tensor& dist, const at::Tensor& loss,
                                  at::Tensor* grad) {
                                AT_DISPATCH_FLOATING_TYPES_AND2(
                                    at::kHalf, at::kBFloat16, pred.scalar_type(), "fused_eps_loss_cuda",
                                    [&] { run<scalar_t>(pred, others, coeffs, weights, D, scale, dist, loss, grad); });
                              });
}

TORCH_LIBRARY_IMPL(unlearn_fast, CUDA, m) { m.impl("fused_eps_loss", &fused_eps_loss_cuda); }

}  // namespace unlearn_fast
