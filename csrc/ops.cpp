// Op schemas of the dlsa_prod namespace (one place), and the Python module stub.
// Typed C++ signatures and callers: include/dlsa_prod/ops.h.  Kernels: cpu/gmm_loglik_cpu.cpp,
// cuda/gmm_loglik_cuda.cpp (+ cuda/gmm_kernels.cu); autograd: autograd/gmm_loglik_autograd.cpp;
// run-time settings: settings.cpp.
#include <torch/library.h>

#ifdef DLSA_PROD_PYTHON_MODULE
#include <Python.h>
extern "C" {
// Importing dlsa_prod._C loads this library, whose static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif

TORCH_LIBRARY(dlsa_prod, m) {
  // Per-sample GMM log-likelihood (B), argmax cluster (B, int64) and, when return_log_probs,
  // the per-component log-densities (B, K) (else an empty (0, K) tensor).  means are fixed
  // (no gradient).  log_det: optional (B) added to every component.  Non-finite rows: see
  // include/dlsa_prod/ops.h (cluster is always in [0, K)).
  m.def("gmm_loglik_fwd(Tensor u, Tensor means, Tensor? log_det, bool return_log_probs)"
        " -> (Tensor loglik, Tensor cluster, Tensor log_probs)");
  // Private: the backward of gmm_loglik_fwd, called by its autograd.  Gradient w.r.t. u and
  // log_det for upstream gradients on loglik and (optionally) log_probs.  log_probs: the
  // forward's (B, K) output when it was materialised (saves a GEMM), else None.
  m.def("_gmm_loglik_bwd(Tensor grad_loglik, Tensor? grad_log_probs, Tensor u, Tensor means, Tensor loglik,"
        " Tensor? log_det, Tensor? log_probs) -> (Tensor grad_u, Tensor grad_log_det)");
  // Stable split of a batch by threshold: indices with loglik >= threshold, and the rest (NaN
  // included).
  m.def("filter_split(Tensor loglik, float threshold) -> (Tensor exit_idx, Tensor continue_idx)");
  // Which float32 row kernels the CPU ops use on this machine: "avx2+fma" or "portable"
  // (DLSA_PROD_CPU_SIMD=off, read once, forces portable).
  m.def("cpu_row_isa() -> str");
  // The CUDA forward kernel in use, "gemm" or "tiled" (from DLSA_PROD_CUDA_FWD, read once at
  // load); a non-empty `select` switches it for the whole process (benchmarks, tests).
  m.def("_cuda_forward(str select) -> str");
}
