"""Training precision: bf16 autocast for the MAF and the classifiers, the GMM term in IEEE fp32,
tf32 a CUDA-only switch, and the config / CLI field."""

import pytest
import torch

import dlsa_prod.models.flow_gmm as flow_gmm
from dlsa_prod.config import ClassifierConfig, FilterConfig, GMFlowConfig, config_from_dict
from dlsa_prod.errors import ConfigError
from dlsa_prod.models import FlowGMM
from dlsa_prod.training.classifier_trainer import ClassifierData, predict_logits, train_classifier
from dlsa_prod.training.flow_trainer import train_flow
from dlsa_prod.training.options import TrainOptions
from dlsa_prod.training.precision import forward_autocast, matmul_precision

from conftest import blobs


def test_bf16_autocast_runs_the_maf_in_bf16_and_the_gmm_term_in_fp32(monkeypatch):
    torch.manual_seed(0)
    model = FlowGMM(16, num_cluster=5, center_std=0.5, hidden_size=32).train()
    x = torch.randn(64, 16)
    seen = {}
    real = flow_gmm.gmm_loglik

    def spy(u, means, log_det, *a, **k):
        seen.update(u=u.dtype, log_det=log_det.dtype, autocast=torch.is_autocast_enabled("cpu"))
        return real(u, means, log_det, *a, **k)

    monkeypatch.setattr(flow_gmm, "gmm_loglik", spy)
    hidden = []
    model.flow.layers[0].net[0].register_forward_hook(lambda m, i, o: hidden.append(o.dtype))
    with forward_autocast("bf16", x.device):
        out = model(x, return_log_probs=True)
    assert hidden == [torch.bfloat16]  # the MLP ran in bf16
    assert seen == {"u": torch.float32, "log_det": torch.float32, "autocast": False}
    assert out.loglik.dtype == torch.float32 and out.log_probs.dtype == torch.float32
    ref = model(x).loglik
    assert (out.loglik - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 MLP: close, not equal


def test_tf32_has_no_effect_on_cpu_and_is_restored():
    knob = torch.backends.cuda.matmul
    before = getattr(knob, "fp32_precision", None)
    with matmul_precision("tf32", torch.device("cpu")):
        assert getattr(knob, "fp32_precision", None) == before
    with pytest.raises(ValueError, match="precision must be one of fp32, tf32, bf16"):
        with matmul_precision("fp16", torch.device("cpu")):
            pass


def test_trainers_in_bf16_train_and_select():
    torch.manual_seed(0)
    fs = blobs([120, 80, 50, 30, 18, 10], seed=1)
    x, y = torch.from_numpy(fs.features), torch.from_numpy(fs.labels)
    cfg = GMFlowConfig.model_validate({"model": {"num_cluster": 12}, "data": {"batchsize": 64},
                                       "optim": {"lr": 0.05, "epoch": 2}})
    res = train_flow(x, y, 6, cfg, FilterConfig(min_size=2), torch.Generator().manual_seed(0),
                     options=TrainOptions(precision="bf16"))
    assert res.best_epoch in (1, 2) and res.quality.good_clusters > 0
    data = ClassifierData(x, y)
    ccfg = ClassifierConfig.model_validate({"eval_freq": 1, "model": {"inputs": "XZ"},
                                            "optim": {"lr": 0.05, "epoch": 3, "momentum": 0.9}})
    accs = {}
    for p in ("fp32", "bf16"):
        clf = train_classifier(data, data, 6, ccfg, torch.Generator().manual_seed(0), uses_prior=False,
                               options=TrainOptions(precision=p), init_generator=torch.Generator().manual_seed(0))
        accs[p] = float((predict_logits(clf.model, data).argmax(1) == y).float().mean())
    assert accs["bf16"] == pytest.approx(accs["fp32"], abs=0.05)


def test_precision_config_field():
    base = {"data": {"train": "a.npz", "test": "b.npz"}}
    assert config_from_dict(base).precision == "fp32"
    assert config_from_dict(base, overrides=["precision=bf16"]).precision == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        config_from_dict({**base, "precision": "fp16"})


def test_cli_precision_option_reaches_the_config(tiny_files, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    import dlsa_prod.pipeline as pipeline
    from dlsa_prod.cli import main

    from conftest import tiny_config_dict

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_config_dict(*tiny_files)))
    seen = {}
    monkeypatch.setattr(pipeline, "run_training", lambda cfg, out, force=False: seen.setdefault("p", cfg.precision))
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--out", str(tmp_path / "run"), "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    assert seen == {"p": "bf16"}
    res = CliRunner().invoke(main, ["train", str(cfg_file), "--precision", "fp16"])
    assert res.exit_code == 2 and "fp16" in res.output


def test_flow_cache_key_depends_on_the_training_precision(tiny_config):
    from dlsa_prod.training.cascade import _RunStreams, flow_cache_key

    x, y = torch.zeros(4, 8), torch.zeros(4, dtype=torch.int64)
    keys = {p: flow_cache_key(x, y, (None, None), tiny_config,
                              _RunStreams(torch.Generator().manual_seed(0), torch.Generator().manual_seed(0),
                                          TrainOptions(precision=p), None))
            for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
