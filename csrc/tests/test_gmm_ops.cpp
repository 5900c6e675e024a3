// C++ test of the dlsa_prod ops through their public header (CPU; CUDA too when available):
// forward against a float64 broadcast reference, backward (the op, and autograd through the
// forward) against an analytic reference, non-finite rows, filter split, and a clear error
// on bad input.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include "dlsa_prod/ops.h"

#include <cmath>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

// float64 broadcast reference: (B, K) log-densities
at::Tensor reference_log_probs(const at::Tensor& u, const at::Tensor& mu, const at::Tensor& ld) {
  auto ud = u.to(at::kDouble).cpu(), md = mu.to(at::kDouble).cpu();
  return -0.5 * (ud.unsqueeze(1) - md.unsqueeze(0)).pow(2).sum(-1) - 0.5 * u.size(1) * std::log(2 * M_PI) +
         ld.to(at::kDouble).cpu().unsqueeze(1);
}

void run(const at::Device& dev) {
  const std::string tag = dev.is_cuda() ? "[cuda] " : "[cpu] ";
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  const int64_t b = 37, k = 70, d = 33;
  auto u = at::randn({b, d}, opts), mu = at::randn({k, d}, opts) * 0.5, ld = at::randn({b}, opts);
  {
    auto [ll, cl, lp] = dlsa_prod::gmm_loglik_fwd(u, mu, ld, true);
    auto ref = reference_log_probs(u, mu, ld);
    auto ref_ll = at::logsumexp(ref, 1) - std::log(double(k));
    const double err = (ll.to(at::kDouble).cpu() - ref_ll).abs().max().item<double>();
    expect(err < 1e-3, tag + "loglik vs float64 reference, max abs err " + std::to_string(err));
    expect(at::equal(cl.cpu(), ref.argmax(1)), tag + "cluster == reference argmax");
    // backward: d loglik / du = sum_k post_k (mu_k - u)
    auto g = at::ones({b}, opts);
    auto post = at::softmax(ref, 1);
    auto ref_gu = at::mm(post, mu.to(at::kDouble).cpu()) - u.to(at::kDouble).cpu();
    for (bool saved : {false, true}) {
      auto [gu, gld] = dlsa_prod::detail::gmm_loglik_bwd(g, std::nullopt, u, mu, ll, ld,
                                                 saved ? std::optional<at::Tensor>(lp) : std::nullopt);
      const double gerr = (gu.to(at::kDouble).cpu() - ref_gu).abs().max().item<double>();
      expect(gerr < 1e-3, tag + "grad u vs analytic reference" + (saved ? " (saved log_probs)" : " (recomputed)") +
                              ", max abs err " + std::to_string(gerr));
      expect((gld.cpu() - 1).abs().max().item<double>() < 1e-4, tag + "grad log_det == 1");
    }
  }
  {
    // autograd from C++ (csrc/autograd): loglik.sum().backward() through the op itself
    auto uu = u.detach().clone().requires_grad_(true);
    auto [ll, cl, lp] = dlsa_prod::gmm_loglik_fwd(uu, mu, ld, false);
    expect(ll.requires_grad() && !cl.requires_grad() && lp.size(0) == 0,
           tag + "autograd: loglik differentiable, cluster not, log_probs a (0, K) placeholder");
    ll.sum().backward();
    auto post = at::softmax(reference_log_probs(u, mu, ld), 1);
    auto ref_gu = at::mm(post, mu.to(at::kDouble).cpu()) - u.to(at::kDouble).cpu();
    const double gerr = (uu.grad().to(at::kDouble).cpu() - ref_gu).abs().max().item<double>();
    expect(gerr < 1e-3, tag + "autograd: u.grad vs analytic reference, max abs err " + std::to_string(gerr));
  }
  {
    // non-finite rows (include/dlsa_prod/ops.h): NaN row -> NaN, all -inf -> -inf, +inf -> NaN;
    // cluster 0 for all of them, the other rows untouched
    auto v = u.clone(), ldv = ld.clone();
    v[0][3] = NAN;
    v[1].fill_(1e30);        // |u|^2 overflows: every log p_k is -inf
    ldv[2] = INFINITY;       // every log p_k is +inf
    ldv[3] = -INFINITY;      // every log p_k is -inf
    auto [ll, cl, lp] = dlsa_prod::gmm_loglik_fwd(v, mu, ldv, false);
    auto llc = ll.cpu(), clc = cl.cpu();
    expect(std::isnan(llc[0].item<double>()) && std::isinf(llc[1].item<double>()) && llc[1].item<double>() < 0 &&
               std::isnan(llc[2].item<double>()) && std::isinf(llc[3].item<double>()),
           tag + "non-finite rows: NaN, -inf, NaN, -inf");
    expect(clc.narrow(0, 0, 4).eq(0).all().item<bool>() && clc.ge(0).all().item<bool>() &&
               clc.lt(k).all().item<bool>(),
           tag + "non-finite rows get cluster 0; every cluster in [0, K)");
    auto [ll_ok, cl_ok, lp_ok] = dlsa_prod::gmm_loglik_fwd(u, mu, ld, false);
    expect(at::equal(ll.narrow(0, 4, b - 4), ll_ok.narrow(0, 4, b - 4)) &&
               at::equal(cl.narrow(0, 4, b - 4), cl_ok.narrow(0, 4, b - 4)),
           tag + "finite rows unchanged by non-finite neighbours");
  }
  auto ll = at::randn({100}, opts);
  auto [keep, rest] = dlsa_prod::filter_split(ll, 0.1);
  expect(keep.numel() + rest.numel() == 100 && at::equal(keep.cpu(), at::nonzero(ll.cpu() >= 0.1).flatten()),
         tag + "filter_split keeps ascending indices with loglik >= threshold");
  bool threw = false;
  try {
    dlsa_prod::gmm_loglik_fwd(u, mu.narrow(1, 0, 5).contiguous(), std::nullopt, false);
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("u has dim 33 but means have dim 5") != std::string::npos;
  }
  expect(threw, tag + "dim mismatch gives a clear error");
}

}  // namespace

int main() {
  at::manual_seed(0);
  run(at::Device(at::kCPU));
  if (torch::cuda::is_available() &&
      c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::gmm_loglik_fwd", "").hasKernelForDispatchKey(
          c10::DispatchKey::CUDA)) {
    run(at::Device(at::kCUDA));
  }
  std::cout << (failures ? "FAILED" : "all passed") << " (" << failures << " failures)\n";
  return failures ? 1 : 0;
}
