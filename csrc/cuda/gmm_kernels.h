// Launchers of the CUDA kernels (gmm_kernels.cu).  They take raw device pointers, enqueue on
// `stream` and never throw; callers check launch errors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dlsa_prod {
namespace cuda_kernels {

constexpr int kTile = 64;   // rows of u and centres per tile (tiled forward)
constexpr int kTileK = 16;  // depth of one shared-memory stage
constexpr int kThreads = 256;

// |u_b|^2 (b rows) and |mu_k|^2 (k rows), one launch
template <typename T>
void launch_sq_norms(const T* u, int64_t b, const T* mu, int64_t k, int64_t dim, T* un, T* mn, cudaStream_t stream);

// tiled forward: part_* are (ceil(k / kTile), b) scratch; log_probs may be null
template <typename T>
void launch_fwd_tiled(const T* u, const T* mu, const T* un, const T* mn, const T* ld, int64_t b, int64_t k, int64_t dim,
                      T c, T log_k, T* log_probs, T* part_m, T* part_s, int64_t* part_arg, T* loglik, int64_t* cluster,
                      cudaStream_t stream);

// row epilogue over a (b, k) buffer of dot products (written as log_probs when `write`)
template <typename T>
void launch_fwd_rows(T* dot, const T* un, const T* mn, const T* ld, int64_t b, int64_t k, T c, T log_k, bool write,
                     T* loglik, int64_t* cluster, cudaStream_t stream);

// backward rows: G into buf (may alias src), its row sums, and grad_u = -rowsum * u (b, dim)
template <typename T>
void launch_bwd_rows(const T* src, T* buf, bool from_dot, const T* un, const T* mn, const T* ld, const T* grad_ll,
                     const T* glp, const T* loglik, const T* u, int64_t b, int64_t k, int64_t dim, T c, T log_k,
                     T* rowsum, T* grad_u, cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace dlsa_prod
