"""Config validation: research configs load, bad keys/types give one line naming file and key."""

import pytest
import yaml

from dlsa_prod.config import load_config
from dlsa_prod.errors import ConfigError

# hyper-parameters of the research repo's ImageNet-LT / PaCo / balanced-softmax config,
# in its key layout (keys it reads but we ignore included: feat_dir, num_workers, eval_freq ...)
RESEARCH_IMAGENET_PACO_BSM = """
dataset: ImageNet_LT
feat_dir: features/imagenet/paco/
backbone_weight_path: features/imagenet/paco/imagenetlt_r50.pth
max_depth: 3
gmflow:
  model: {n_blocks: 2, n_hidden: 1, num_cluster: 500, gmm_center_std: 0.05}
  data: {batchsize: 1024, weight_q: 2.0, num_workers: 8}
  optim: {lr: 0.2, epoch: 50, momentum: 0}
  loss: {lambda_lh: 2., lambda_balance: 1., lambda_purity: 0.02, posterior_momentum: 0.7,
         contrast_type: soft_ce, contrast_freeze: true}
filter:
  llh_proportion: 0.3
cacls:
  eval_freq: 5
  model: {type: linear, inputs: XZP}
  loss: {type: BSM, label_smoothing: 0}
  data: {batchsize: 128}
  optim: {lr: 1.0e-4, epoch: 150, momentum: 0}
regcls:
  eval_freq: 5
  model: {type: linear, inputs: XZ}
  loss: {type: BSM, label_smoothing: 0}
  data: {batchsize: 128}
  optim: {lr: 1.0e-4, epoch: 150, momentum: 0}
"""
# the research BaseConfig's nulls and extra keys, which a user may have merged in
RESEARCH_BASE_EXTRAS = """
device: cuda
root_dir: ./logs
data_dir: null
gmflow:
  save_freq: 100
  model: {input_order: sequential, batch_norm: true}
  optim: {warmup_epochs: 0, cos_lr: False, steps: [], grad_clip: False}
  loss: {contrast_margin: null}
filter: {llh_thres: null, min_purity: 0.7, min_size: 10}
cacls:
  model: {hidden_layers: [], batch_norm: true, weight_decay: 0}
  data: {sampler: {name: null, num_samples_cls: null}, num_workers: 0}
  optim: {warmup_epochs: 0, cos_lr: false, steps: []}
"""
DATA = "data:\n  feat_dir: /tmp/feats\n"


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_research_config_loads_after_adding_data(tmp_path):
    cfg = load_config(_write(tmp_path, RESEARCH_IMAGENET_PACO_BSM + DATA))
    assert cfg.max_depth == 3 and cfg.gmflow.model.num_cluster == 500 and cfg.gmflow.optim.lr == 0.2
    assert cfg.cacls.model.inputs == "XZP" and cfg.regcls.model.inputs == "XZ"
    assert cfg.cacls.loss.type == "BSM" and cfg.filter.llh_proportion == 0.3


def test_research_config_merged_with_base_loads(tmp_path):
    tree = _merge(yaml.safe_load(RESEARCH_BASE_EXTRAS), yaml.safe_load(RESEARCH_IMAGENET_PACO_BSM + DATA))
    cfg = load_config(_write(tmp_path, yaml.safe_dump(tree)))
    assert cfg.cacls.data.sampler.name == "none" and cfg.device == "cuda"


def test_unimplemented_classifier_type_is_named(tmp_path):
    text = (RESEARCH_IMAGENET_PACO_BSM + DATA).replace("type: linear, inputs: XZP", "type: ride, inputs: XZP")
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, text))
    msg = str(exc.value)
    assert "c.yaml" in msg and "cacls.model.type" in msg and "'ride' is not implemented" in msg
    assert "\n" not in msg


def test_unknown_key_and_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml: gmflow\.model\.n_blokcs: unknown key"):
        load_config(_write(tmp_path, "gmflow: {model: {n_blokcs: 2}}\n" + DATA))
    with pytest.raises(ConfigError, match=r"c\.yaml: gmflow\.optim\.lr: expected a number, got 'fast'"):
        load_config(_write(tmp_path, "gmflow: {optim: {lr: fast, epoch: 3}}\n" + DATA))
    with pytest.raises(ConfigError, match=r"max_depth: expected an integer"):
        load_config(_write(tmp_path, "max_depth: [1]\n" + DATA))


def test_missing_data_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_config(_write(tmp_path, "max_depth: 1\n"))
    with pytest.raises(ConfigError, match=r"not valid YAML \(line"):
        load_config(_write(tmp_path, "a: [1,\nb: 2\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, DATA), ["gmflow.optim.lr=0.5", "max_depth=2", "filter.llh_thres=-3"])
    assert cfg.gmflow.optim.lr == 0.5 and cfg.max_depth == 2
    assert cfg.filter.llh_thres == -3 and cfg.filter.llh_proportion is None
    with pytest.raises(ConfigError, match="--set"):
        load_config(_write(tmp_path, DATA), ["max_depth"])
    with pytest.raises(ConfigError, match="gmflow.optim.nope: unknown key"):
        load_config(_write(tmp_path, DATA), ["gmflow.optim.nope=1"])


def test_sampler_aliases(tmp_path):
    cfg = load_config(_write(tmp_path, DATA + "cacls: {data: {sampler: ClassAwareSampler}}\n"))
    assert cfg.cacls.data.sampler.name == "class-balanced"
