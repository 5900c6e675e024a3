"""Random streams of a training run, passed as generators.

PyTorch's module constructors draw their initial weights from the global CPU generator
(``nn.Linear.reset_parameters`` calls ``nn.init.kaiming_uniform_`` without a generator), so a
trainer that builds a model cannot pass its own generator to the constructor.  ``drawing_from``
runs such code on a given generator's stream instead: the global generator is left exactly as it
was found, and the given generator advances by what was drawn.  Built on
``torch.random.fork_rng``, which saves and restores the CPU generator around the block.

A run's streams (all derived from its seed, never from the global state):
- the run generator (samplers, fold splits, cluster centres): ``pipeline.seed_everything``;
- DLSA's module-init stream: ``module_init_generator(seed)``;
- each baseline's own pair (training, init), derived from (seed, name): ``baselines.derived_generator``.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def drawing_from(generator: torch.Generator | None):
    """Within the block, draws from the global CPU generator come from `generator` (None: the global
    generator itself, unchanged behaviour).  On exit `generator` holds the advanced state and the
    global generator is restored."""
    if generator is None:
        yield None
        return
    if generator.device.type != "cpu":
        raise ValueError(f"drawing_from needs a CPU generator (module constructors draw on the CPU), got {generator.device}")
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        try:
            yield generator
        finally:
            generator.set_state(torch.get_rng_state())


def module_init_generator(seed: int) -> torch.Generator:
    """DLSA's module-init stream: the flows' MADE layers and the classifiers' initial weights.  Seeded
    like ``torch.manual_seed(seed)``, so a run draws exactly what it drew from the freshly seeded
    global generator before this stream existed."""
    return torch.Generator().manual_seed(seed)
