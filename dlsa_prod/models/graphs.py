"""Views of the trained cascade as graphs: the torch modules the exporter turns into ONNX graphs and
the torch backend serves.

* ``FusedGraph``: every depth for the whole batch; each sample's exit classifier is selected
  with masks.  Outputs logits, pred, exit_depth, loglik (B, D).
* staged graphs, one per stage, for per-sample routing at run time (and TensorRT, whose If
  op routes whole batches only): ``FilterGraph`` (flow + GMM of depth d -> loglik, cluster),
  ``ClusterAidedGraph`` (x, cluster -> logits; the prior lookup is inside the graph) and
  ``RegularGraph`` (x -> logits).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .classifiers import FeatureClassifier
from .dlsa_model import DepthStage, DLSAModel

from ..array_ops import TorchOps
from ..routing import exits, masked_route, regular_exit


class FilterGraph(nn.Module):
    def __init__(self, stage: DepthStage):
        super().__init__()
        self.stage = stage

    def forward(self, x):
        return self.stage.route(x)


class ClusterAidedGraph(nn.Module):
    def __init__(self, stage: DepthStage):
        super().__init__()
        self.stage = stage

    def forward(self, x, cluster):
        return self.stage.classify(x, cluster)


class RegularGraph(nn.Module):
    def __init__(self, classifier: FeatureClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x)


class FusedGraph(nn.Module):
    def __init__(self, model: DLSAModel):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        logits = m.regular(x)
        exit_depth = torch.full_like(x[:, 0], regular_exit(m.depth), dtype=torch.int64)
        lls, masks, stage_logits = [], [], []
        for stage in m.stages:
            ll, cluster = stage.route(x)
            lls.append(ll)
            masks.append(exits(ll, stage.threshold, cluster))
            stage_logits.append(stage.classify(x, cluster))
        logits, exit_depth = masked_route(masks, stage_logits, logits, exit_depth, TorchOps(x.device))
        return logits, logits.argmax(1), exit_depth, torch.stack(lls, 1)


def staged_graphs(model: DLSAModel) -> dict[str, tuple[nn.Module, tuple[str, ...], tuple[str, ...]]]:
    """name -> (module, input names, output names) for every stage of the cascade."""
    graphs = {}
    for d, stage in enumerate(model.stages, start=1):
        graphs[f"filter_{d}"] = (FilterGraph(stage), ("x",), ("loglik", "cluster"))
        graphs[f"classifier_{d}"] = (ClusterAidedGraph(stage), ("x", "cluster"), ("logits",))
    graphs["regular"] = (RegularGraph(model.regular), ("x",), ("logits",))
    return graphs


class ImageInput(nn.Module):
    """Backbone trunk in front of a feature-input graph: normalised images (N, C, H, W) in."""

    def __init__(self, trunk: nn.Module, graph: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.cascade = graph  # not "graph": that name is taken on exported FX modules

    def forward(self, image):
        return self.cascade(self.trunk(image))


class BackboneGraph(nn.Module):
    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def forward(self, image):
        return self.trunk(image)
