"""What a trained method offers the evaluation: its features, and what else it can do.

Every method declares its own `Representation` (`method.representation(stage, eval_config,
seed)`), so the evaluation never asks which method it holds: it probes whatever features are
declared, reconstructs with methods that decode z, and runs the time-step probe and
counterfactuals on a z that is split in time-step subsets.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jdiffrep import timestep_features

# (params, clean images x0 [B, H, W, C]) -> {feature name: [B, D]}; jittable.
FeatureFn = Callable[[object, jax.Array], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Representation:
  """The feature sets of one trained stage and its capabilities.

  features: the stage's features of clean images, one or more named sets.
  sweep_family: set when the features are one embedding read along the diffusion chain, named
    f'{sweep_family}_t{t}' (their t sweep is summarised at the t chosen on validation);
    `sweep_label` names the family in plots.
  partition: the time-step subsets of z when there is more than one (DiTi): the time-step probe
    and the counterfactuals apply.
  reconstructs: `method.reconstruct(params, frozen, x0, num_steps=...)` decodes z by DDIM.
  architecture: for an embedding the method learns, a description of the network that computes
    it (equal strings: the same architecture); the evaluation adds one row of that network at
    random initialisation (`config.evaluate.random_encoder_baselines`). None: no such row (the
    DM's features).
  """
  features: FeatureFn
  sweep_family: str | None = None
  sweep_label: str = ''
  partition: timestep_features.TimestepPartition | None = None
  reconstructs: bool = False
  architecture: str | None = None
