"""diffusers' `DiTTransformer2DModel` (PyTorch) -> our DiT's flax params, to start from published weights.

    model = diffusers.DiTTransformer2DModel.from_pretrained('facebook/DiT-XL-2-256', subfolder='transformer')
    dit_model, params = convert.dit_from_diffusers(model)
    eps_and_sigma = dit_model.apply({'params': params}, x_nhwc, t, labels=y)

diffusers keeps a copy of the time and class embedders in every block (`norm1.emb`); DiT has one.
Published weights hold the same copy in every block; the converter takes block 0's (the one
diffusers' final layer uses) and refuses state dicts whose copies differ. diffusers' time
frequencies use `downscale_freq_shift=1` (`DiT.time_frequency_shift=1`); its adaLN chunks are
(shift, scale, gate) for attention then MLP, as in DiT. Its second LayerNorm per block uses the
config's `norm_eps` (1e-5 by default), ours 1e-6: a relative difference of ~5e-6 on unit-variance
tokens, below the 1e-4 the tests check.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from jdiffrep.models import dit

_EMBEDDER_PREFIX = 'transformer_blocks.{i}.norm1.emb.'
_SUPPORTED_CONFIG = {
    'norm_type': 'ada_norm_zero',
    'activation_fn': 'gelu-approximate',
    'attention_bias': True,
    'norm_elementwise_affine': False,
}


def dit_kwargs_from_diffusers_config(config: Mapping[str, Any]) -> dict:
  """diffusers DiT config (`model.config`) -> keyword arguments of `dit.DiT`."""
  for key, value in _SUPPORTED_CONFIG.items():
    if config.get(key, value) != value:
      raise ValueError(f'Cannot convert a diffusers DiT with {key}={config[key]!r}: only '
                       f'{key}={value!r} (the DiT architecture) has a counterpart in dit.DiT.')
  heads, head_dim = int(config['num_attention_heads']), int(config['attention_head_dim'])
  out_channels = config.get('out_channels') or config['in_channels']
  return dict(
      depth=int(config['num_layers']),
      hidden_size=heads * head_dim,
      num_heads=heads,
      patch_size=int(config['patch_size']),
      out_channels=int(out_channels),
      num_classes=int(config['num_embeds_ada_norm']),
      time_frequency_shift=1.0,
  )


def _numpy(tensor) -> np.ndarray:
  """A torch tensor (any device, dtype) or array -> float32 NumPy."""
  if hasattr(tensor, 'detach'):
    tensor = tensor.detach().float().cpu().numpy()
  return np.asarray(tensor, np.float32)


def _dense(state: Mapping[str, np.ndarray], name: str) -> dict:
  """torch Linear `name` (weight [out, in]) -> flax Dense {'kernel': [in, out], 'bias': [out]}."""
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def _check_shared_embedders(state: Mapping[str, np.ndarray], depth: int) -> None:
  """Raise unless every block's time/class embedder equals block 0's (true of published DiTs)."""
  first = _EMBEDDER_PREFIX.format(i=0)
  for i in range(1, depth):
    prefix = _EMBEDDER_PREFIX.format(i=i)
    for key in (k for k in state if k.startswith(first)):
      if not np.array_equal(state[key], state[prefix + key[len(first):]]):
        raise ValueError(
            f'Block {i} has its own {prefix + key[len(first):]}, unlike block 0; dit.DiT shares one '
            'time and class embedder across blocks (as published DiT weights do), so this state '
            'dict cannot be converted exactly. Copy block 0\'s norm1.emb into every block first.')


def params_from_diffusers(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
  """diffusers DiT state dict + config -> params of `dit.DiT(**dit_kwargs_from_diffusers_config(config))`."""
  kwargs = dit_kwargs_from_diffusers_config(config)
  depth, hidden = kwargs['depth'], kwargs['hidden_size']
  state = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith('pos_embed.pos_embed')}
  _check_shared_embedders(state, depth)
  emb = _EMBEDDER_PREFIX.format(i=0)
  table = state[emb + 'class_embedder.embedding_table.weight']
  if table.shape != (kwargs['num_classes'] + 1, hidden):
    raise ValueError(f'Class embedding table has shape {table.shape}; dit.DiT needs '
                     f'(num_classes + 1, hidden) = {(kwargs["num_classes"] + 1, hidden)} '
                     '(the last row is the null class of classifier-free guidance).')
  params = {
      # Conv2d weight [D, C, p, p] -> flax Conv kernel [p, p, C, D].
      'x_embedder': {'proj': {'kernel': state['pos_embed.proj.weight'].transpose(2, 3, 1, 0),
                              'bias': state['pos_embed.proj.bias']}},
      't_embedder': {'mlp_0': _dense(state, emb + 'timestep_embedder.linear_1'),
                     'mlp_2': _dense(state, emb + 'timestep_embedder.linear_2')},
      'y_embedder': {'embedding_table': table},
      'final_layer': {'adaLN_modulation': _dense(state, 'proj_out_1'),
                      'linear': _dense(state, 'proj_out_2')},
  }
  for i in range(depth):
    block = f'transformer_blocks.{i}.'
    attn = {name: _dense(state, block + f'attn1.to_{name}') for name in ('q', 'k', 'v')}
    params[f'blocks_{i}'] = {
        'adaLN_modulation': _dense(state, block + 'norm1.linear'),
        'attn': {
            # Our fused qkv output is ordered (3, heads, head_dim): q, k, v side by side.
            'qkv': {'kernel': np.concatenate([attn[n]['kernel'] for n in 'qkv'], axis=1),
                    'bias': np.concatenate([attn[n]['bias'] for n in 'qkv'])},
            'proj': _dense(state, block + 'attn1.to_out.0'),
        },
        'mlp': {'fc1': _dense(state, block + 'ff.net.0.proj'),
                'fc2': _dense(state, block + 'ff.net.2')},
    }
  return params


def dit_from_diffusers(model, **dit_overrides) -> tuple[dit.DiT, dict]:
  """A `diffusers.DiTTransformer2DModel` -> (our `dit.DiT`, its params as NumPy float32).

  `dit_overrides` set DiT fields the weights do not fix (dtype, attention_impl). Our DiT takes
  NHWC images where diffusers takes NCHW, and returns NHWC.
  """
  kwargs = dit_kwargs_from_diffusers_config(model.config)
  params = params_from_diffusers(model.state_dict(), model.config)
  return dit.DiT(**kwargs, **dit_overrides), params
