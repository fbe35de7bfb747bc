"""The projection and prediction heads of the SimCLR and SimSiam baselines.

As the official DiTi baselines (`model/representation/ssl/simclr.py`, `simsiam.py` of
yue-zhongqi/diti), on the encoder's z [B, d]:
- SimCLR: Linear(d, hidden) -> ReLU -> Linear(hidden, out).
- SimSiam projector: (Linear -> BN -> ReLU) x 2 -> Linear -> BN; predictor:
  Linear(out, bottleneck) -> BN -> ReLU -> Linear(bottleneck, out).

The heads exist only for the training loss and are dropped afterwards, so their batch norm always
normalises with the statistics of the batch it sees (PyTorch's training mode, over the global
batch as SyncBatchNorm: under `jax.jit` the mean runs over the whole sharded batch); running
averages are never kept. Call them with `mutable=['batch_stats']` and discard that collection.
"""

from __future__ import annotations

from flax import linen as nn
import jax


def _batch_norm(name: str) -> nn.BatchNorm:
  # PyTorch's BatchNorm1d: eps 1e-5, learnable scale and bias.
  return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, name=name)


class SimCLRProjector(nn.Module):
  """z [B, d] -> [B, out_dim]."""
  hidden_dim: int
  out_dim: int = 256

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h = nn.relu(nn.Dense(self.hidden_dim, name='layer1')(z))
    return nn.Dense(self.out_dim, name='layer2')(h)


class SimSiamHeads(nn.Module):
  """z [B, d] -> (projection [B, out_dim], prediction [B, out_dim])."""
  hidden_dim: int
  out_dim: int
  bottleneck_dim: int = 128

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.relu(_batch_norm('projector_bn1')(nn.Dense(self.hidden_dim, name='projector1')(z)))
    h = nn.relu(_batch_norm('projector_bn2')(nn.Dense(self.hidden_dim, name='projector2')(h)))
    projection = _batch_norm('projector_bn3')(nn.Dense(self.out_dim, name='projector3')(h))
    h = nn.relu(_batch_norm('predictor_bn1')(
        nn.Dense(self.bottleneck_dim, name='predictor1')(projection)))
    prediction = nn.Dense(self.out_dim, name='predictor2')(h)
    return projection, prediction
