"""diffusers' DiTTransformer2DModel and our DiT agree after converting the same random weights."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# CI (which sets CI=true) installs the 'test' extra: there a missing torch is a failure, not a skip.
if os.environ.get('CI', '').lower() in ('1', 'true') or os.environ.get('JDIFFREP_REQUIRE_PEER'):
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
else:
  torch = pytest.importorskip('torch', reason="needs the 'peer' or 'test' extra (torch)")
  diffusers = pytest.importorskip('diffusers', reason="needs the 'peer' or 'test' extra")

from jdiffrep.models import convert  # pylint: disable=g-import-not-at-top


def random_diffusers_dit(*, heads, head_dim, layers, patch, size, in_channels, out_channels,
                         num_classes, seed=0):
  """A diffusers DiT with every weight random (no zero adaLN) and one shared embedder copy."""
  torch.manual_seed(seed)
  model = diffusers.DiTTransformer2DModel(
      num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
      out_channels=out_channels, num_layers=layers, sample_size=size, patch_size=patch,
      num_embeds_ada_norm=num_classes)
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.1)
    # Published weights hold the same time/class embedder in every block.
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(first)
  return model.eval()


@pytest.mark.parametrize('heads,head_dim,layers,patch,size,in_channels,out_channels', [
    (2, 32, 2, 2, 8, 4, 8),  # learn_sigma-style out_channels = 2 * in_channels
    (4, 16, 3, 4, 16, 3, 3),
])
def test_forward_matches_diffusers(heads, head_dim, layers, patch, size, in_channels,
                                   out_channels):
  num_classes, batch = 10, 3
  model = random_diffusers_dit(heads=heads, head_dim=head_dim, layers=layers, patch=patch,
                               size=size, in_channels=in_channels, out_channels=out_channels,
                               num_classes=num_classes)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(batch, in_channels, size, size)).astype(np.float32)
  t = np.array([0, 417, 999])
  labels = np.array([3, 9, num_classes])  # the last is the null (guidance) class
  with torch.no_grad():
    expected = model(torch.from_numpy(x), timestep=torch.from_numpy(t),
                     class_labels=torch.from_numpy(labels)).sample.numpy()

  dit_model, params = convert.dit_from_diffusers(model)
  out = dit_model.apply({'params': params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t),
                        labels=jnp.asarray(labels))

  assert out.shape == (batch, size, size, out_channels)
  assert np.abs(expected).mean() > 0.1  # every path carries signal, nothing trivially zero
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, rtol=0, atol=1e-4)


def test_converted_params_have_the_tree_dit_initialises():
  model = random_diffusers_dit(heads=2, head_dim=16, layers=2, patch=2, size=8, in_channels=3,
                               out_channels=6, num_classes=5)
  dit_model, params = convert.dit_from_diffusers(model)
  reference = jax.eval_shape(dit_model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                             jnp.zeros((1,)), labels=jnp.zeros((1,), jnp.int32))['params']
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, reference)


def test_blocks_with_their_own_embedders_are_refused():
  model = random_diffusers_dit(heads=2, head_dim=16, layers=2, patch=2, size=8, in_channels=3,
                               out_channels=3, num_classes=5)
  with torch.no_grad():
    model.transformer_blocks[1].norm1.emb.timestep_embedder.linear_1.bias.add_(1.0)
  with pytest.raises(ValueError, match='shares one time and class embedder'):
    convert.dit_from_diffusers(model)
