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


def test_literal_hints_come_from_the_fields_own_choices(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, DATA + "cacls: {loss: {type: focal}}\n"))
    msg = str(exc.value)
    assert "cacls.loss.type: got 'focal', expected one of 'CE' or 'BSM'" in msg and "linear" not in msg
    with pytest.raises(ConfigError, match=r"gmflow.loss.contrast_type: 'class_aware' is not implemented by "
                                          r"dlsa_prod \(supported: 'soft_ce'\)"):
        load_config(_write(tmp_path, DATA + "gmflow: {loss: {contrast_type: class_aware}}\n"))


def test_strict_scalar_types(tmp_path):
    with pytest.raises(ConfigError, match="gmflow.optim.epoch: expected an integer, got True"):
        load_config(_write(tmp_path, DATA), ["gmflow.optim.epoch=true"])
    with pytest.raises(ConfigError, match="gmflow.model.batch_norm: expected true or false, got 1"):
        load_config(_write(tmp_path, DATA + "gmflow: {model: {batch_norm: 1}}\n"))
    with pytest.raises(ConfigError, match="cacls.optim.lr: expected a number, got True"):
        load_config(_write(tmp_path, DATA + "cacls: {optim: {lr: yes}}\n"))
    # what YAML 1.1 reads as strings stays accepted for numbers (the research configs write 1e-4)
    cfg = load_config(_write(tmp_path, DATA + "cacls: {optim: {lr: 1e-4}}\ngmflow: {optim: {grad_clip: true}}\n"))
    assert cfg.cacls.optim.lr == 1e-4 and cfg.gmflow.optim.grad_clip is True


def test_llh_threshold_and_proportion_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="filter: set only one of llh_proportion and llh_thres"):
        load_config(_write(tmp_path, DATA + "filter: {llh_proportion: 0.3, llh_thres: -2}\n"))
    with pytest.raises(ConfigError, match="set only one of llh_proportion and llh_thres"):
        load_config(_write(tmp_path, DATA + "filter: {llh_proportion: 0.3}\n"), ["filter.llh_thres=-2"])
    cfg = load_config(_write(tmp_path, DATA + "filter: {llh_proportion: 0.3}\n"),
                      ["filter.llh_thres=-2", "filter.llh_proportion=null"])
    assert cfg.filter.llh_thres == -2 and cfg.filter.llh_proportion is None


def test_one_classifier_weight_decay_key(tmp_path):
    cfg = load_config(_write(tmp_path, DATA + "cacls: {model: {weight_decay: 0.001}}\n"))
    assert cfg.cacls.model.weight_decay == 0.001 and not hasattr(cfg.cacls.optim, "weight_decay")
    # the old second key maps onto the research key; both set is an error, never a sum
    cfg = load_config(_write(tmp_path, DATA + "regcls: {optim: {weight_decay: 0.002}}\n"))
    assert cfg.regcls.model.weight_decay == 0.002
    with pytest.raises(ConfigError, match="cacls: weight decay is set twice: use model.weight_decay only"):
        load_config(_write(tmp_path, DATA + "cacls: {model: {weight_decay: 0.1}, optim: {weight_decay: 0.2}}\n"))
    assert load_config(_write(tmp_path, DATA)).gmflow.optim.weight_decay == 0.0  # the flow keeps its own


def test_relative_paths_follow_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    cfg_file = _write(tmp_path / "conf", "data: {train: ../d/train.npz, test: test.npz}\n"
                                          "backbone: {weights: resnet18_weights, cache_dir: cache}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_file, ["data.val=v.npz"])
    assert cfg.data.train == tmp_path / "d" / "train.npz" and cfg.data.test == tmp_path / "conf" / "test.npz"
    assert cfg.data.val == tmp_path / "v.npz"  # --set paths: relative to the cwd
    assert cfg.backbone.weights == "resnet18_weights"  # a torchvision weight name, not a path
    assert cfg.backbone.cache_dir == tmp_path / "cache"  # outputs: relative to the cwd, stored absolute
    assert set(cfg.input_paths()) == {cfg.data.train, cfg.data.test, cfg.data.val}
