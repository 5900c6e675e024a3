// C++ test of the dlsa_prod ops through the dispatcher (CPU; CUDA too when available):
// forward against a float64 broadcast reference, mask, backward (the op, and autograd through
// the forward) against an analytic reference, filter split, and a clear error on bad input.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

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

using FwdFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                             const std::optional<at::Tensor>&,
                                                             const std::optional<at::Tensor>&, bool);
using BwdFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                 const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                 const std::optional<at::Tensor>&);
using FilterFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double);

// float64 broadcast reference: (B, K) log-densities with masked entries at -inf
at::Tensor reference_log_probs(const at::Tensor& u, const at::Tensor& mu, const at::Tensor& ld,
                               const std::optional<at::Tensor>& mask) {
  auto ud = u.to(at::kDouble).cpu(), md = mu.to(at::kDouble).cpu();
  auto lp = -0.5 * (ud.unsqueeze(1) - md.unsqueeze(0)).pow(2).sum(-1) - 0.5 * u.size(1) * std::log(2 * M_PI) +
            ld.to(at::kDouble).cpu().unsqueeze(1);
  if (mask.has_value()) lp.masked_fill_(mask->cpu().logical_not(), -INFINITY);
  return lp;
}

void run(const at::Device& dev) {
  const std::string tag = dev.is_cuda() ? "[cuda] " : "[cpu] ";
  auto fwd = c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::gmm_loglik_fwd", "").typed<FwdFn>();
  auto bwd = c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::gmm_loglik_bwd", "").typed<BwdFn>();
  auto filt = c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::filter_split", "").typed<FilterFn>();
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  const int64_t b = 37, k = 70, d = 33;
  auto u = at::randn({b, d}, opts), mu = at::randn({k, d}, opts) * 0.5, ld = at::randn({b}, opts);
  for (bool use_mask : {false, true}) {
    std::optional<at::Tensor> mask;
    if (use_mask) mask = (at::arange(k, opts.dtype(at::kLong)) % 3 != 0);
    auto [ll, cl, lp] = fwd.call(u, mu, ld, mask, true);
    auto ref = reference_log_probs(u, mu, ld, mask);
    const double n_active = use_mask ? mask->sum().item<double>() : double(k);
    auto ref_ll = at::logsumexp(ref, 1) - std::log(n_active);
    const double err = (ll.to(at::kDouble).cpu() - ref_ll).abs().max().item<double>();
    expect(err < 1e-3, tag + "loglik vs float64 reference" + (use_mask ? " (masked)" : "") +
                           ", max abs err " + std::to_string(err));
    expect(at::equal(cl.cpu(), ref.argmax(1)), tag + "cluster == reference argmax");
    // backward: d loglik / du = sum_k post_k (mu_k - u)
    auto g = at::ones({b}, opts);
    auto [gu, gld] = bwd.call(g, std::nullopt, u, mu, ll, ld, mask, std::nullopt);
    auto post = at::softmax(ref, 1);
    auto ref_gu = at::mm(post, mu.to(at::kDouble).cpu()) - u.to(at::kDouble).cpu();
    const double gerr = (gu.to(at::kDouble).cpu() - ref_gu).abs().max().item<double>();
    expect(gerr < 1e-3, tag + "grad u vs analytic reference, max abs err " + std::to_string(gerr));
    expect((gld.cpu() - 1).abs().max().item<double>() < 1e-4, tag + "grad log_det == 1");
  }
  {
    // autograd from C++ (csrc/autograd): loglik.sum().backward() through the op itself
    auto uu = u.detach().clone().requires_grad_(true);
    auto [ll, cl, lp] = fwd.call(uu, mu, ld, std::nullopt, false);
    expect(ll.requires_grad() && !cl.requires_grad() && lp.size(0) == 0,
           tag + "autograd: loglik differentiable, cluster not, log_probs a (0, K) placeholder");
    ll.sum().backward();
    auto post = at::softmax(reference_log_probs(u, mu, ld, std::nullopt), 1);
    auto ref_gu = at::mm(post, mu.to(at::kDouble).cpu()) - u.to(at::kDouble).cpu();
    const double gerr = (uu.grad().to(at::kDouble).cpu() - ref_gu).abs().max().item<double>();
    expect(gerr < 1e-3, tag + "autograd: u.grad vs analytic reference, max abs err " + std::to_string(gerr));
  }
  auto ll = at::randn({100}, opts);
  auto [keep, rest] = filt.call(ll, 0.1);
  expect(keep.numel() + rest.numel() == 100 && at::equal(keep.cpu(), at::nonzero(ll.cpu() >= 0.1).flatten()),
         tag + "filter_split keeps ascending indices with loglik >= threshold");
  bool threw = false;
  try {
    fwd.call(u, mu.narrow(1, 0, 5).contiguous(), std::nullopt, std::nullopt, false);
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
