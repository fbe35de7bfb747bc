"""SimCLR and SimSiam: the self-supervised baselines of the DiTi paper, on DiTi's own encoder.

As the official baselines (`config/celeba64/simclr.yml`, `simsiam.yml`, `trainer/diti_trainer.py`
of yue-zhongqi/diti, which train the DiTi encoder with the SSL loss alone, `no_pdae: True`):
two augmented views of each image (`jdiffrep.augment`, inside the jitted step) go through the
encoder E (`diti.make_encoder`: the same architecture and d as DiTi's z) and a head, and the loss
is `loss_weight` (official `ssl_weight`, 0.01) times
- SimCLR: NT-Xent of the projections at temperature 0.5 (`nt_xent`);
- SimSiam: D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, D the negative cosine (`simsiam_loss`).
The encoder trains with `config.optim` (Adam, as the official `optimizer_config`); the head with
its own SGD (momentum 0.9, weight decay 1e-6, cosine-annealed to a tenth), the official
`ssl_opt_sgd` (`optimizer`). The representation is E's z of the clean image, like DiTi's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jdiffrep import augment
from jdiffrep import images as images_lib
from jdiffrep.methods import diti
from jdiffrep.methods import representation
from jdiffrep.models import encoders
from jdiffrep.models import ssl_heads

KINDS = ('simclr', 'simsiam')


def l2_normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Rows of x [B, D] over max(|x|, eps), as torch.nn.functional.normalize."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """SimCLR's NT-Xent of projections z1, z2 [N, D] (row i of each: two views of one image).

  Each of the 2N rows is classified among the other 2N - 1 by cosine similarity / temperature,
  its positive being the other view of its image (official `NT_XentLoss`). Returns the mean loss
  and the fraction of rows whose positive is the most similar row (a health signal).
  """
  n = z1.shape[0]
  z = l2_normalize(jnp.concatenate([z1, z2]).astype(jnp.float32))
  logits = (z @ z.T) / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # a row is not its own pair
  positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, positive)
  return jnp.mean(loss), jnp.mean(jnp.argmax(logits, axis=-1) == positive)


def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
  """SimSiam's D(p, z) = -mean cos(p, sg(z)): the target z gets no gradient."""
  z = jax.lax.stop_gradient(z)
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def simsiam_loss(p1, z1, p2, z2) -> jax.Array:
  """D(p1, z2) / 2 + D(p2, z1) / 2 (the official symmetric loss)."""
  return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


@dataclasses.dataclass(frozen=True)
class SSL:
  """SimCLR (`kind='simclr'`) or SimSiam on the DiTi encoder."""
  kind: str
  encoder: encoders.nn.Module
  head: ssl_heads.nn.Module
  view: augment.ViewAugmentation
  image_shape: tuple[int, int, int]
  latent_dim: int
  loss_weight: float = 0.01
  temperature: float = 0.5
  head_learning_rate: float = 0.016
  head_momentum: float = 0.9
  head_weight_decay: float = 1e-6
  head_final_lr_fraction: float = 0.1
  num_train_steps: int = 1

  @classmethod
  def from_config(cls, config, image_shape, *, workdir: str = '', kind: str = 'simclr') -> 'SSL':
    del workdir  # trains from scratch on images alone
    if kind not in KINDS:
      raise ValueError(f'Unknown SSL method {kind!r}; valid: {KINDS}.')
    c = config[kind]
    latent_dim = config.diti.latent_dim
    hidden_dim = c.hidden_dim if c.hidden_dim > 0 else latent_dim
    if kind == 'simclr':
      head = ssl_heads.SimCLRProjector(hidden_dim=hidden_dim, out_dim=c.projection_dim)
    else:
      head = ssl_heads.SimSiamHeads(hidden_dim=hidden_dim,
                                    out_dim=c.out_dim if c.out_dim > 0 else latent_dim,
                                    bottleneck_dim=c.bottleneck_dim)
    for field in ('loss_weight', 'head_learning_rate'):
      if not c[field] > 0:
        raise ValueError(f'config.{kind}.{field}={c[field]!r} must be positive.')
    return cls(kind=kind, encoder=diti.make_encoder(config), head=head,
               view=augment.ViewAugmentation.from_config(c.augment),
               image_shape=tuple(image_shape), latent_dim=latent_dim,
               loss_weight=float(c.loss_weight), temperature=float(c.get('temperature', 0.5)),
               head_learning_rate=float(c.head_learning_rate),
               head_momentum=float(c.head_momentum), head_weight_decay=float(c.head_weight_decay),
               head_final_lr_fraction=float(c.head_final_lr_fraction),
               num_train_steps=int(config.num_train_steps))

  # -------------------------------------------------------------- parameters
  def init_params(self, rng: jax.Array) -> dict:
    enc_rng, head_rng = jax.random.split(rng)
    x = jnp.zeros((2, *self.image_shape), jnp.float32)
    z = jnp.zeros((2, self.latent_dim), jnp.float32)
    return {'encoder': self.encoder.init(enc_rng, x)['params'],
            'head': self.head.init(head_rng, z)['params']}

  def load_frozen(self) -> dict:
    return {}

  def abstract_frozen(self) -> dict:
    return {}

  def warm_start_params(self) -> dict:
    return {}

  def abstract_params(self):
    return jax.eval_shape(self.init_params, jax.random.PRNGKey(0))

  def optimizer(self, encoder_tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`encoder_tx` (config.optim's) for the encoder; the head's own SGD as the official
    `ssl_opt_sgd`: momentum 0.9, weight decay 1e-6, cosine from the head rate to a tenth of it
    over the run (torch's CosineAnnealingLR with eta_min = lr / 10)."""
    schedule = optax.cosine_decay_schedule(self.head_learning_rate, self.num_train_steps,
                                           alpha=self.head_final_lr_fraction)
    head_tx = optax.chain(optax.add_decayed_weights(self.head_weight_decay),
                          optax.sgd(schedule, momentum=self.head_momentum))
    return optax.multi_transform({'encoder': encoder_tx, 'head': head_tx},
                                 {'encoder': 'encoder', 'head': 'head'})

  # -------------------------------------------------------------- the model
  def encode(self, params, x0: jax.Array) -> jax.Array:
    """x0 [B, H, W, C] in [-1, 1] -> z [B, d] float32."""
    return self.encoder.apply({'params': params['encoder']}, x0)

  def embedding(self, params, x0: jax.Array) -> jax.Array:
    """The embedding whose health training logs (`jdiffrep.health`): z."""
    return self.encode(params, x0)

  def representation(self, stage: str, eval_config, seed: int) -> representation.Representation:
    del eval_config, seed
    return representation.Representation(
        features=lambda params, x0: {stage: self.encode(params, x0)},
        architecture=repr(self.encoder))

  def views(self, rng: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two independent augmented views of `images` [B, H, W, C]."""
    rng1, rng2 = jax.random.split(rng)
    return augment.augment_batch(images, rng1, self.view), augment.augment_batch(images, rng2,
                                                                                 self.view)

  def ssl_loss(self, head_params, z1: jax.Array, z2: jax.Array) -> tuple[jax.Array, dict]:
    """The unweighted SimCLR or SimSiam loss of the two views' z [B, d], and its metrics."""
    apply = lambda z: self.head.apply({'params': head_params}, z, mutable=['batch_stats'])[0]
    if self.kind == 'simclr':
      loss, accuracy = nt_xent(apply(z1), apply(z2), self.temperature)
      return loss, {'contrastive_accuracy': accuracy}
    (proj1, pred1), (proj2, pred2) = apply(z1), apply(z2)
    return simsiam_loss(pred1, proj1, pred2, proj2), {
        'projection_std': jnp.mean(jnp.std(l2_normalize(proj1), axis=0))}

  def loss(self, params, frozen, batch: dict, rng: jax.Array):
    """loss_weight x the SSL loss of two augmented views of each image; scalar and metrics."""
    del frozen
    view1, view2 = self.views(rng, batch['image'])
    z = self.encode(params, jnp.concatenate([view1, view2]))  # one pass, as the official
    z1, z2 = jnp.split(z, 2)
    ssl_loss, metrics = self.ssl_loss(params['head'], z1, z2)
    return self.loss_weight * ssl_loss, {**metrics, 'ssl_loss': ssl_loss,
                                         'z_norm': jnp.mean(jnp.linalg.norm(z, axis=-1))}

  def preview(self, params, frozen, rng: jax.Array, images: jax.Array) -> jax.Array:
    """The augmentations: rows of 8 originals, each followed by their view 1 and view 2 rows.

    [3N', H, W, C] (N' = N rounded up to 8); the same views every call for a fixed `rng`.
    """
    del params, frozen
    return images_lib.interleave_rows(images, *self.views(rng, images))
