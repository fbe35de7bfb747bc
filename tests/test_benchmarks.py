"""Benchmark tools: the 6 x MACs formula counts our DiT's matmuls exactly; peak table; curve plots."""

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from jdiffrep.models import dit


def traced_macs(jaxpr) -> int:
  """Multiply-accumulates of every dot_general and convolution in `jaxpr`, nested ones included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += int(np.prod(lhs)) * int(np.prod(rhs_free))
    elif eqn.primitive.name == 'conv_general_dilated':
      out, kernel = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
      total += int(np.prod(out)) * int(np.prod(kernel)) // out[-1]
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax_core.ClosedJaxpr):
          total += traced_macs(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          total += traced_macs(sub)
  return total


@pytest.mark.parametrize('name,resolution,out_channels', [('XXS/4', 32, 3), ('XS/2', 16, 6)])
def test_formula_macs_equal_traced_matmuls(name, resolution, out_channels):
  model = dit.dit_from_name(name, out_channels=out_channels)
  x, t = jnp.zeros((1, resolution, resolution, 3)), jnp.zeros((1,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), x, t)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, x, t))(params).jaxpr
  assert traced_macs(jaxpr) == flops.dit_forward_macs(name, resolution, out_channels=out_channels)
  assert flops.dit_train_step_flops(name, resolution, 4, out_channels=out_channels) == (
      6 * 4 * flops.dit_forward_macs(name, resolution, out_channels=out_channels))


def test_peak_flops_table():
  assert flops.peak_flops('NVIDIA H100 80GB HBM3', 'gpu', 'bfloat16')[0] == 989.4e12
  assert flops.peak_flops('NVIDIA H100 PCIe', 'gpu', 'bfloat16')[0] == 756e12
  peak, source = flops.peak_flops('Some Accelerator', 'gpu', 'bfloat16')
  assert peak is None and 'PEAK_FLOPS' in source


def test_learning_curves_group_probe_rows_by_run_and_plot_them(tmp_path):
  from benchmarks import learning_curves  # pylint: disable=g-import-not-at-top

  def row(workdir, step, linear):
    return {'command': f'python -m jdiffrep.main --workdir=runs/{workdir} --x=1', 'probe': 'p',
            'step': step, 'attribute_probe_test_mean_ap': linear - 0.01,
            'categorical': {'diti': {'linear': linear, 'knn': 0.5}}}

  rows = [row('b', 2000, 0.8), {'command': 'no probe', 'step': 5}, row('a', 3000, 0.9),
          row('a', 1000, 0.7)]
  runs = learning_curves.curves(rows)
  assert list(runs) == ['b', 'a']
  assert [r['step'] for r in runs['a']] == [1000, 3000]
  with pytest.raises(ValueError, match='--workdir'):
    learning_curves.curves([{'command': 'x', 'probe': 'p', 'step': 1}])
  out = tmp_path / 'curves.png'
  baseline = {'attribute_probe': {'pixels': {'test_mean_ap': 0.9}},
              'categorical_probe_summary': {'pixels': {'linear': 0.9}}}
  learning_curves.plot(runs, str(out), baseline)
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
