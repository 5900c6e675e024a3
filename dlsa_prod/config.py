"""Run configuration: YAML validated by pydantic.

The sections mirror the research code (silicx/DLSA) so that its configs load after adding
only a ``data`` section: ``gmflow`` (flow filter), ``filter``, ``cacls`` (cluster-aided
classifier), ``regcls`` (regular classifier) and ``max_depth``.  Keys the research code
reads but that have no effect here (``num_workers``, ``save_freq``, ``root_dir`` ...) are
accepted and ignored; options it offers that dlsa_prod does not implement (classifier
type ``ride``, other contrast types) fail with a clear message.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from .errors import ConfigError
from .metrics import FEW_SHOT, MANY_SHOT

# the baselines dlsa_prod trains next to DLSA, defined once: the config's choices, the trainers'
# registry (training/baselines.REGISTRY) and the benchmarks all read this tuple
BASELINE_NAMES = ("CE", "BSM", "LA", "cRT")
BaselineName = Literal[BASELINE_NAMES]

class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping naming the same key twice (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader names it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """yaml.safe_load, refusing duplicate keys (a yaml.YAMLError names the line)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


# Values the research code (silicx/DLSA) offers but dlsa_prod does not implement, keyed by the
# key's path below its section (``cacls.model.type`` -> "model.type"); the supported values
# of the error message come from the field's Literal.
_RESEARCH_ONLY_VALUES = {
    "model.type": {"ride"},
    "loss.contrast_type": {"class_aware", "hard", "none"},
}


def _scalar_types(annotation) -> set:
    """The scalar types (int, float, bool) a field annotation admits, looking through Optional/Union."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(annotation)))
    return {annotation} & {int, float, bool}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value, info: ValidationInfo):
        """No silent bool <-> number conversion: ``epoch: true`` is not epoch 1, ``cos_lr: 1`` is not true."""
        field = cls.model_fields.get(info.field_name)
        allowed = _scalar_types(field.annotation) if field is not None else set()
        if isinstance(value, bool) and allowed and bool not in allowed:
            raise ValueError(f"expected {'an integer' if allowed == {int} else 'a number'}, got {value!r}")
        if allowed == {bool} and value is not None and not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value


# ----------------------------------------------------------------------------- gmflow
class FlowModelConfig(_Section):
    n_blocks: int = Field(2, ge=1)
    n_hidden: int = Field(1, ge=1)
    hidden_size: Optional[int] = Field(None, ge=2, description="MADE width; null = feature dim (research)")
    input_order: Literal["sequential", "random"] = "sequential"
    num_cluster: int = Field(500, ge=1)
    gmm_center_std: float = Field(0.05, gt=0)
    batch_norm: bool = True
    log_scale_clamp: float = Field(10.0, gt=0, description="soft clamp c*tanh(a/c) on MADE log-scales")
    gmm_backend: Literal["auto", "native", "torch", "broadcast"] = Field(
        "auto", description="GMM term: auto = native kernels when built for the device, else pure torch "
                            "(dlsa_prod.ops.gmm_loglik)")


class FlowDataConfig(_Section):
    batchsize: int = Field(1024, ge=2)
    weight_q: float = 2.0
    num_workers: int = 0  # accepted for research compatibility; features live in memory


class _OptimBase(_Section):
    lr: float = Field(0.2, gt=0)
    epoch: int = Field(50, ge=1)
    momentum: float = Field(0.0, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    cos_lr: bool = False
    steps: list[int] = Field(default_factory=list, description="epochs at which lr is multiplied by 0.1")
    grad_clip: Union[bool, float] = False


class OptimConfig(_OptimBase):
    """The flow's optimiser (gmflow.optim)."""

    weight_decay: float = Field(0.0, ge=0)


class ClassifierOptimConfig(_OptimBase):
    """A classifier's optimiser; its weight decay is ``model.weight_decay`` (the research key)."""

    lr: Union[float, list[float]] = Field(
        1e-2, description="learning rate, or a list of candidates: each trained from the same start, the one with "
                          "the lowest class-balanced val log-loss kept (training/lr_candidates.py)")
    epoch: int = Field(150, ge=1)
    updates: Optional[int] = Field(
        None, ge=1, description="training length in optimizer updates (overrides epoch): each classifier trains "
                                "ceil(updates / batches per epoch) epochs of its own training set, so a 1k and a "
                                "15k set (or a small cascade exit) get the same number of SGD steps"
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _no_bool_rates(cls, value):
        if isinstance(value, list) and any(isinstance(r, bool) for r in value):
            raise ValueError(f"expected numbers, got {value!r}")
        return value

    @field_validator("lr")
    @classmethod
    def _positive_rates(cls, value):
        rates = value if isinstance(value, list) else [value]
        if not rates or any(not r > 0 for r in rates):
            raise ValueError(f"expected a number > 0 or a non-empty list of them, got {value!r}")
        return value

    @model_validator(mode="after")
    def _updates_without_milestones(self):
        if self.updates is not None and self.steps:
            raise ValueError("updates: cannot be combined with optim.steps (lr milestones in epochs); use cos_lr")
        return self


class FlowLossConfig(_Section):
    lambda_lh: float = 2.0
    lambda_balance: float = 1.0
    lambda_purity: float = 0.02
    posterior_momentum: float = Field(0.7, ge=0, lt=1)
    contrast_type: Literal["soft_ce"] = "soft_ce"
    contrast_margin: Optional[float] = None  # research key; unused by soft_ce
    contrast_freeze: bool = True


class GMFlowConfig(_Section):
    save_freq: int = 100  # research key; checkpoints are written once per run here
    eval_freq: int = Field(1, ge=1, description="epochs between flow epoch-selection checks")
    select_on: Literal["train", "val"] = "train"
    model: FlowModelConfig = Field(default_factory=FlowModelConfig)
    data: FlowDataConfig = Field(default_factory=FlowDataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: FlowLossConfig = Field(default_factory=FlowLossConfig)


# ----------------------------------------------------------------------------- filter
class FilterConfig(_Section):
    llh_proportion: Optional[float] = Field(0.3, gt=0, lt=1)
    llh_thres: Optional[float] = None
    min_purity: float = Field(0.7, ge=0, le=1)
    min_size: int = Field(10, ge=1)
    max_cluster_size: int = Field(5000, ge=1)
    min_remaining: int = Field(
        0, ge=0, description="stop recursing when fewer training samples remain (0 = 2 per class)"
    )

    @model_validator(mode="after")
    def _one_rule(self):
        if self.llh_thres is not None:
            if "llh_proportion" in self.model_fields_set and self.llh_proportion is not None:
                raise ValueError("set only one of llh_proportion and llh_thres (the other to null)")
            self.__dict__["llh_proportion"] = None
        elif self.llh_proportion is None:
            raise ValueError("set one of filter.llh_proportion or filter.llh_thres")
        return self


# ----------------------------------------------------------------------------- classifiers
class ClassifierModelConfig(_Section):
    type: Literal["linear", "cosine"] = "linear"
    inputs: Literal["XZP", "XZ"] = "XZP"
    hidden_layers: list[int] = Field(default_factory=list)
    batch_norm: bool = True
    weight_decay: float = Field(0.0, ge=0)
    cosine_scale: float = Field(16.0, gt=0)


class ClassifierLossConfig(_Section):
    type: Literal["CE", "BSM"] = "BSM"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class SamplerConfig(_Section):
    name: Literal["none", "class-balanced"] = "none"
    num_samples_cls: Optional[int] = None  # research key, unused

    @field_validator("name", mode="before")
    @classmethod
    def _aliases(cls, v):
        if v is None:
            return "none"
        aliases = {"classawaresampler": "class-balanced", "class_balanced": "class-balanced",
                   "classbalanced": "class-balanced", "balanced": "class-balanced"}
        return aliases.get(str(v).lower(), v)


class ClassifierDataConfig(_Section):
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    batchsize: int = Field(128, ge=1)
    num_workers: int = 0

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_shorthand(cls, v):
        return {"name": v} if v is None or isinstance(v, str) else v


class ClassifierConfig(_Section):
    eval_freq: int = Field(5, ge=1)
    model: ClassifierModelConfig = Field(default_factory=ClassifierModelConfig)
    loss: ClassifierLossConfig = Field(default_factory=ClassifierLossConfig)
    data: ClassifierDataConfig = Field(default_factory=ClassifierDataConfig)
    optim: ClassifierOptimConfig = Field(default_factory=ClassifierOptimConfig)

    @model_validator(mode="before")
    @classmethod
    def _one_weight_decay(cls, tree):
        """``optim.weight_decay`` (written by earlier dlsa_prod versions) maps onto ``model.weight_decay``."""
        if not isinstance(tree, dict) or not isinstance(tree.get("optim"), dict) or "weight_decay" not in tree["optim"]:
            return tree
        optim = dict(tree["optim"])
        wd = optim.pop("weight_decay")
        model = tree.get("model") if isinstance(tree.get("model"), dict) else {}
        if wd not in (0, None) and model.get("weight_decay", 0) not in (0, None):
            raise ValueError("weight decay is set twice: use model.weight_decay only (optim.weight_decay is its "
                             "old alias)")
        if wd not in (0, None):
            model = {**model, "weight_decay": wd}
        return {**tree, "optim": optim, **({"model": model} if model else {})}


# ----------------------------------------------------------------------------- cascade options
class CascadeConfig(_Section):
    """Options beyond the research method (each measured with 3 seeds in docs/benchmarks.md).
    ``base`` names the baseline these options build on; it is trained with the baselines."""

    base: BaselineName = "BSM"
    llh_proportions: Optional[list[float]] = Field(
        None, description="per-depth llh_proportion (the last repeats); null = filter.llh_proportion at every depth"
    )
    warm_start: bool = Field(False, description="start each classifier from the base classifier's weights")
    regular: Literal["train", "prior_shift"] = Field(
        "train", description="train: fit the regular classifier on the remainder (research); prior_shift: the base "
                             "classifier (all samples) with the remainder's class routing shares as its label prior"
    )
    mix_base: bool = Field(False, description="mix each exit classifier's logits with the base classifier's "
                                              "(weight chosen on val; linear heads)")
    prior_temperature: float = Field(1.0, gt=0, description="cluster prior P -> P^(1/T), renormalised")
    prior_balance: bool = Field(False, description="cluster priors of a class-balanced set: each class's share "
                                                    "of a cluster divided by its training count, renormalised")
    route_prior: bool = Field(False, description="add log(share of class y's training samples routed to a "
                                                 "classifier) to its logits: the label prior it meets on a "
                                                 "class-balanced test set (linear heads)")
    route_share_from: Literal["train", "val"] = Field(
        "train", description="where the route shares of route_prior / prior_shift are counted: the training samples "
                             "(which the flow fitted, so tail shares come out too high) or the held-out val samples"
    )

    route_prior_strength: Union[float, Literal["val"]] = Field(
        1.0, description="tau scaling the route-share part of the route prior and of prior_shift (1: the full "
                         "log share; 0: none); \"val\": one tau for the cascade chosen on val from 1, .75, .5, .25, 0"
    )
    calibrate_by: Literal["accuracy", "log_loss"] = Field(
        "accuracy", description="how route_prior_strength \"val\" and mix_base's weights are chosen on val: the "
                                "cascade's val samples right (ties: less mixing, stronger tau), or its class-balanced "
                                "val log-loss (the selection rule's criterion; docs/benchmarks.md, \"Ceiling\")"
    )
    crossfit_folds: int = Field(
        0, description="0: the flow routes its own training samples (research); F in 2..10: the remaining training "
                       "samples of each depth are split into F class-stratified folds, the deployed flow trains "
                       "without the first and takes its threshold, cluster priors and route shares from it, so "
                       "training samples are routed as unseen ones (see crossfit_routing)"
    )
    crossfit_routing: Literal["out_of_fold", "deployed"] = Field(
        "out_of_fold", description="with crossfit_folds: out_of_fold routes each fold with a flow trained without "
                                   "it (F flows per depth); deployed routes every training sample with the deployed "
                                   "flow at its held-out fold's threshold (one flow per depth)"
    )

    exit_train: Literal["routed", "all"] = Field(
        "routed", description="routed: each depth's cluster-aided classifier is trained on the samples that exit "
                              "there (research); all: on every sample that reaches the depth (each with its cluster "
                              "prior), used only for those that exit (epoch and mixing still chosen on exiting val)"
    )
    flow_latent: bool = Field(False, description="the cluster-aided classifier's second feature input is its "
                                                 "depth's flow latent (standardised on the training samples) instead "
                                                 "of the feature again (research)")
    exit_gate: Literal["hard", "soft"] = Field(
        "hard", description="hard: a sample exits at depth d when its log-likelihood reaches the threshold "
                            "(research); soft: every depth mixes its exit classifier's log-probabilities with the "
                            "rest's by sigmoid(slope * (loglik - threshold) + offset), slope and offset chosen on "
                            "val (cannot be exported yet)"
    )

    @field_validator("route_prior_strength", mode="before")
    @classmethod
    def _strength(cls, v):
        if v == "val":
            return v
        try:
            number = float(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else None
        except ValueError:
            number = None
        if number is None or not 0 <= number <= 4:
            raise ValueError(f"route_prior_strength must be \"val\" or a number in [0, 4], got {v!r}")
        return number

    @field_validator("crossfit_folds")
    @classmethod
    def _folds(cls, v):
        if v != 0 and not 2 <= v <= 10:
            raise ValueError("crossfit_folds must be 0 (off) or 2..10")
        return v

    @field_validator("llh_proportions")
    @classmethod
    def _proportions(cls, v):
        if v is not None and (not v or any(not 0 < p < 1 for p in v)):
            raise ValueError("every llh_proportions entry must be in (0, 1)")
        return v


# ----------------------------------------------------------------------------- data / output
class DigitsConfig(_Section):
    imbalance_ratio: float = Field(10.0, ge=1)
    profile: Literal["exponential", "pareto"] = "exponential"
    test_per_class: int = Field(40, ge=1)


class LongTailConfig(_Section):
    imbalance_ratio: float = Field(100.0, ge=1)
    profile: Literal["exponential", "pareto"] = "exponential"


class ImagesConfig(_Section):
    format: Literal["idx", "split_list", "image_folder", "digits"]
    root: Optional[Path] = Field(None, description="idx directory, or the image root of split lists")
    train_list: Optional[Path] = None
    val_list: Optional[Path] = None
    test_list: Optional[Path] = None
    train: Optional[Path] = Field(None, description="ImageFolder tree of the train split")
    val: Optional[Path] = None
    test: Optional[Path] = None
    longtail: Optional[LongTailConfig] = Field(None, description="draw a long-tailed train split from a balanced one")
    image_size: Optional[list[int]] = Field(None, description="[H, W]; default: the images' own size (224 for files)")
    test_per_class: int = Field(40, ge=1, description="digits: balanced test images per class")
    skip_bad_images: bool = False

    @model_validator(mode="after")
    def _needs(self):
        need = {"idx": ("root",), "split_list": ("root", "train_list", "test_list"),
                "image_folder": ("train", "test"), "digits": ()}[self.format]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"images format {self.format!r} needs {', '.join(missing)}")
        return self


class AugmentConfig(_Section):
    crop_padding: int = Field(4, ge=0)
    hflip: bool = True


class BackboneConfig(_Section):
    arch: Literal["cifar_resnet", "resnet18", "resnet34", "resnet50"] = "cifar_resnet"
    weights: Optional[str] = Field(None, description="local .safetensors/.pt file, or a torchvision weight name")
    freeze: bool = Field(False, description="use the given weights as they are (no stage-1 training)")
    loss: Literal["CE", "BSM"] = "CE"
    epochs: int = Field(10, ge=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    batchsize: int = Field(128, ge=2)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    cache_dir: Optional[Path] = Field(None, description="feature cache; default: the user cache directory "
                                                         "(dlsa_prod.user_cache: ~/.cache/dlsa_prod/features)")
    sync_bn: bool = Field(False, description="torchrun on CUDA: batch-norm statistics over all ranks (SyncBatchNorm)")


class DataConfig(_Section):
    source: Literal["features", "digits", "images"] = "features"
    images: Optional[ImagesConfig] = None
    feat_dir: Optional[Path] = None
    train: Optional[Path] = None
    val: Optional[Path] = None
    test: Optional[Path] = None
    val_per_class: int = Field(10, ge=1, description="val samples carved per class when no val file")
    val_max_fraction: float = Field(0.2, gt=0, lt=1, description="never carve more than this share of a class")
    num_classes: Optional[int] = Field(
        None, ge=2, description="number of classes; labels outside 0..num_classes-1 are errors (null = from train)"
    )
    many_shot: int = Field(MANY_SHOT, ge=0, description="many-shot: more than this many training samples")
    few_shot: int = Field(FEW_SHOT, ge=1, description="few-shot: fewer than this many training samples")
    digits: DigitsConfig = Field(default_factory=DigitsConfig)

    @model_validator(mode="after")
    def _paths(self):
        if self.source == "images" and self.images is None:
            raise ValueError("data: source 'images' needs a data.images section")
        if self.source == "features":
            if self.feat_dir is None and (self.train is None or self.test is None):
                raise ValueError("data: set feat_dir, or train and test files, for source 'features'")
        return self


class OutputConfig(_Section):
    dir: Path = Path("runs/dlsa")
    tensorboard: bool = False  # RUN/tensorboard/: per-epoch losses, selection scores, routing shares


class RunConfig(_Section):
    seed: int = Field(0, ge=0, lt=2 ** 63, description="non-negative (numpy and torch seed with it)")
    seeds: Optional[list[Annotated[int, Field(ge=0, lt=2 ** 63)]]] = Field(
        None, description="run the whole comparison once per seed and report mean +- std (overrides seed)"
    )
    device: Literal["cpu", "cuda", "auto"] = "auto"
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="flow MLP and classifier training precision (the GMM term is always IEEE fp32)"
    )
    compile: bool = Field(False, description="torch.compile the flow and classifier forward passes (opt-in)")
    cpu_threads: Optional[int] = Field(
        None, ge=1, le=1024, description="torch intra-op threads for this run (null: torch's default, the CPUs "
                                         "available); a fixed count makes CPU results the same on any core count"
    )
    max_depth: int = Field(1, ge=1)
    baselines: Optional[list[BaselineName]] = Field(
        None, description="baselines to train for comparison (CE, BSM, LA = post-hoc logit adjustment, "
                          "cRT = classifier re-training); null = CE, BSM, LA, cRT"
    )
    data: DataConfig
    backbone: Optional[BackboneConfig] = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    gmflow: GMFlowConfig = Field(default_factory=GMFlowConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    cacls: ClassifierConfig = Field(default_factory=ClassifierConfig)
    regcls: ClassifierConfig = Field(
        default_factory=lambda: ClassifierConfig(model=ClassifierModelConfig(inputs="XZ"))
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    # research keys accepted for compatibility; feat_dir is used when data names no files
    feat_dir: Optional[Path] = None
    dataset: Optional[str] = None
    root_dir: Optional[str] = None
    data_dir: Optional[str] = None
    backbone_weight_path: Optional[str] = None

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct (each names a directory seed_<s>), got {v}")
        return v

    @model_validator(mode="after")
    def _backbone_for_images(self):
        if self.data.source == "images" and self.backbone is None:
            raise ValueError("data.source 'images' needs a backbone section")
        return self

    @model_validator(mode="before")
    @classmethod
    def _research_feat_dir(cls, tree):
        if isinstance(tree, dict) and tree.get("feat_dir") and isinstance(tree.get("data"), dict):
            data = tree["data"]
            if not any(data.get(k) for k in ("feat_dir", "train", "test")) and data.get("source", "features") == "features":
                tree = {**tree, "data": {**data, "feat_dir": tree["feat_dir"]}}
        return tree

    def input_paths(self) -> list[Path]:
        """The files and directories this config reads (data, split lists, backbone weights file)."""
        paths = []
        for key in INPUT_PATH_KEYS + ("backbone.weights",):
            value = _get_dotted(self, key)
            if value is not None and (key != "backbone.weights" or Path(value).exists()):
                paths.append(Path(value))
        return paths

    @property
    def baseline_losses(self) -> list[str]:
        return list(self.baselines) if self.baselines else list(BASELINE_NAMES)


# ----------------------------------------------------------------------------- loading
def _format_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _expected(err: dict) -> str:
    etype = err.get("type", "")
    ctx = err.get("ctx") or {}
    mapping = {
        "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
        "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
        "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
        "model_type": "a mapping", "dict_type": "a mapping", "path_type": "a path",
    }
    if etype in mapping:
        return mapping[etype]
    if etype == "literal_error":
        return f"one of {ctx.get('expected')}"
    return ""


def _model_in(annotation) -> type[BaseModel] | None:
    """The config section class inside an annotation (``Optional[X]``, ``list[X]``, ``X``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def known_keys(loc: tuple) -> list[str]:
    """The keys the section holding LOC's last key accepts (names and research aliases)."""
    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int) or str(part).startswith("function-"):
            continue
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return [k for name, f in model.model_fields.items() for k in (name, f.alias) if k]


def did_you_mean(loc: tuple) -> str:
    """ "; did you mean X?" for an unknown key close to a known one (difflib), else ""."""
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), known_keys(loc), n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {'.'.join([*(str(p) for p in loc[:-1]), close[0]])}?"


def _describe(err: dict, source: str) -> str:
    loc = _format_loc(err["loc"])
    etype = err["type"]
    got = err.get("input")
    if etype == "extra_forbidden":
        return f"{source}: {loc}: unknown key{did_you_mean(err['loc'])}"
    if etype == "missing":
        return f"{source}: {loc}: required key is missing"
    if etype == "literal_error":
        supported = (err.get("ctx") or {}).get("expected", "")
        keys = [str(p) for p in err["loc"] if not isinstance(p, int)]
        if got in _RESEARCH_ONLY_VALUES.get(".".join(keys[-2:]), ()):
            return f"{source}: {loc}: {got!r} is not implemented by dlsa_prod (supported: {supported})"
        return f"{source}: {loc}: got {got!r}, expected one of {supported}"
    expected = _expected(err)
    if expected:
        return f"{source}: {loc}: expected {expected}, got {got!r}"
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"


# Keys holding input paths: relative values in a config file are relative to that file's directory,
# relative values given with --set to the current directory; the run stores them absolute.
INPUT_PATH_KEYS = ("feat_dir", "data.feat_dir", "data.train", "data.val", "data.test", "data.images.root",
                   "data.images.train_list", "data.images.val_list", "data.images.test_list", "data.images.train",
                   "data.images.val", "data.images.test")
# Output locations: relative to the current directory; the run stores them absolute.
OUTPUT_PATH_KEYS = ("backbone.cache_dir",)


def _get_dotted(node: Any, dotted: str) -> Any:
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else getattr(node, k, None)
        if node is None:
            return None
    return node


def _absolute(value: str | Path, base: Path) -> str:
    p = Path(value).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)


def _resolve_tree_paths(tree: dict, base: Path) -> None:
    """Make the config file's relative input paths absolute against BASE (its directory), in place.
    ``backbone.weights`` counts as a path only when such a file exists (else a torchvision weight name)."""
    for key in INPUT_PATH_KEYS + ("backbone.weights",):
        value = _get_dotted(tree, key)
        if not isinstance(value, str) or not value:
            continue
        resolved = _absolute(value, base)
        if key == "backbone.weights" and not Path(resolved).is_file():
            continue
        _set_dotted(tree, key, resolved, "<paths>")


def _absolute_paths(cfg: "RunConfig") -> "RunConfig":
    """Remaining relative input/output paths (from --set or a dict) become absolute against the cwd."""
    cwd = Path.cwd()
    for key in INPUT_PATH_KEYS + OUTPUT_PATH_KEYS:
        value = _get_dotted(cfg, key)
        if value is not None and not Path(value).expanduser().is_absolute():
            parent_key, leaf = key.rsplit(".", 1) if "." in key else ("", key)
            parent = _get_dotted(cfg, parent_key) if parent_key else cfg
            setattr(parent, leaf, Path(_absolute(value, cwd)))
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {dotted}: {k} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML scalars."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. gmflow.optim.lr=0.1)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({problem}); quote it or fix the "
                              f"brackets") from None
        parsed.append((key.strip(), value))
    return parsed


def _drop_nulls(tree: Any) -> Any:
    """Research configs write ``key: null`` for "use the default"; drop those keys."""
    if isinstance(tree, dict):
        return {k: _drop_nulls(v) for k, v in tree.items() if v is not None}
    return tree


def config_from_dict(tree: dict, source: str = "<config>", overrides=()) -> RunConfig:
    """Validate a config tree; relative paths in it are relative to the cwd and come back absolute."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    tree = _drop_nulls(tree)
    parsed = parse_overrides(list(overrides))
    for key, value in parsed:
        _set_dotted(tree, key, value, "--set")
    try:
        return _absolute_paths(RunConfig.model_validate(tree))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = _format_loc(first["loc"])
        # a key (or a value under it) that --set wrote is blamed on --set, not on the config file
        from_set = any(loc == key or loc.startswith(key + ".") for key, _ in parsed)
        raise ConfigError(_describe(first, "--set" if from_set else source)) from None


def read_config_tree(path: str | Path) -> dict:
    """The YAML mapping in PATH (nulls dropped); one-line ConfigError when missing, empty or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        tree = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    if tree is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return _drop_nulls(tree)


def load_config(path: str | Path, overrides=()) -> RunConfig:
    """Load and validate a YAML run configuration.

    Relative input paths in the file are relative to the file's directory, those given in
    OVERRIDES (``--set``) to the current directory; every input/output path comes back absolute."""
    path = Path(path)
    tree = read_config_tree(path)
    _resolve_tree_paths(tree, path.absolute().parent)
    return config_from_dict(tree, str(path), overrides)


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# Where a run's inputs and outputs live, and which device it runs on: the only settings of a run's
# config.yaml that may change after training (data moved, another machine); every other setting
# shapes the trained model and its inference, and is covered by ``settings_sha256``.
LOCATION_KEYS = (*INPUT_PATH_KEYS, *OUTPUT_PATH_KEYS, "output", "device", "backbone.weights", "root_dir",
                 "data_dir", "backbone_weight_path")


def _written_part(tree, written):
    """TREE restricted to the keys WRITTEN has (recursively through sections)."""
    if not (isinstance(tree, dict) and isinstance(written, dict)):
        return tree
    return {k: _written_part(v, written[k]) for k, v in tree.items() if k in written}


def settings_sha256(cfg: RunConfig, written: dict | None = None) -> str:
    """sha256 of every setting of CFG except LOCATION_KEYS (canonical JSON, so comments, key order and
    formatting do not count).

    written: the tree of the run's config.yaml as read back.  A run's config.yaml holds every setting
    the package had when it was trained, so a setting the file lacks was added to the package later
    (its default is the behaviour the run was trained with) and is left out: runs keep loading after
    an upgrade.  A setting deleted from a newer run's file still changes the digest, since the digest
    recorded at training covered it."""
    import hashlib
    import json

    tree = cfg.model_dump(mode="json")
    if written is not None:
        tree = _written_part(tree, written)
    for dotted in LOCATION_KEYS:
        *parents, last = dotted.split(".")
        node = tree
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()
