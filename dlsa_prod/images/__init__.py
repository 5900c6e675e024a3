"""From images to features: image datasets, long-tailed draws, backbones, feature extraction."""
