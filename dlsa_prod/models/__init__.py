from .batchnorm_flow import BatchNormFlow
from .classifiers import CosineLinear, FeatureClassifier
from .dlsa_model import DepthStage, DLSAModel, DLSAOutput
from .flow_gmm import FlowGMM
from .made import MADE
from .maf import MAF

__all__ = ["BatchNormFlow", "CosineLinear", "FeatureClassifier", "DepthStage", "DLSAModel", "DLSAOutput",
           "FlowGMM", "MADE", "MAF"]
