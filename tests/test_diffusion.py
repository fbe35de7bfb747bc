"""Tests for jdiffrep.diffusion: schedules, q_sample, eps loss, DDIM sampling and inversion."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep.diffusion import (
    Schedule,
    ddim_invert,
    ddim_sample,
    ddim_timesteps,
    eps_loss,
    make_schedule,
    q_sample,
)
from jdiffrep.models.dit import DiT

T = 1000


@pytest.fixture(scope='module')
def schedule():
  return make_schedule('linear', T)


def gaussian_eps_fn(schedule, mu, s):
  """Optimal eps predictor for data x0 ~ N(mu, s^2 I): E[eps | x_t] = sqrt(1-a)(x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""

  def eps_fn(x, t):
    a = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1 - a)

  return eps_fn


def invert_then_sample(eps_fn, schedule, x0, num_steps):
  @jax.jit
  def roundtrip(x):
    x_T = ddim_invert(eps_fn, schedule, x, num_steps=num_steps)
    return x_T, ddim_sample(eps_fn, schedule, x_T, num_steps=num_steps)

  return roundtrip(x0)


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule(schedule):
  assert isinstance(schedule, Schedule) and schedule.num_timesteps == T
  for field in (
      schedule.betas,
      schedule.alphas,
      schedule.alphas_cumprod,
      schedule.alphas_cumprod_prev,
  ):
    assert field.shape == (T,) and field.dtype == jnp.float32
  betas = np.asarray(schedule.betas)
  assert betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / (T - 1), rtol=1e-3)
  abar = np.asarray(schedule.alphas_cumprod)
  assert np.all(np.diff(abar) < 0)
  np.testing.assert_allclose(abar, np.cumprod(1 - np.linspace(1e-4, 0.02, T)), rtol=1e-4)
  prev = np.asarray(schedule.alphas_cumprod_prev)
  assert prev[0] == 1.0
  np.testing.assert_array_equal(prev[1:], abar[:-1])
  # SPEC 3: DiTi's w_t = snr^0.1 / (1 + snr) built from these float32 values.
  snr = abar / (1 - abar)
  w = snr**0.1 / (1 + snr)
  assert (
      abs(w[0] - 2.5e-4) < 5e-6 and abs(w[-1] - 0.364) < 1e-3 and abs(int(np.argmax(w)) - 475) <= 1
  )


def test_cosine_schedule_matches_analytic_formula():
  schedule = make_schedule('cosine', T)
  s = 0.008
  f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
  expected = np.array([f((t + 1) / T) / f(0) for t in range(T)])
  abar = np.asarray(schedule.alphas_cumprod)
  assert abar.dtype == np.float32 and np.all(np.diff(abar) < 0)
  np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-4, atol=1e-7)
  assert np.asarray(schedule.betas).max() <= np.float32(0.999)  # the last beta is clipped


def test_unknown_schedule_kind_raises():
  with pytest.raises(ValueError, match="valid kinds: \\['linear', 'cosine'\\]"):
    make_schedule('sigmoid')


# ----------------------------------------------------------------------------- q_sample and loss


def test_q_sample_statistics(schedule):
  n, t = 20000, 300
  x0 = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.key(1), (n, 4, 4, 2))
  x_t = jax.jit(q_sample)(schedule, jnp.broadcast_to(x0, eps.shape), jnp.full((n,), t), eps)
  abar = float(schedule.alphas_cumprod[t])
  np.testing.assert_allclose(
      x_t.mean(0), math.sqrt(abar) * x0[0], atol=4 * math.sqrt(1 - abar) / math.sqrt(n)
  )
  np.testing.assert_allclose(x_t.var(0), 1 - abar, rtol=0.05)


def test_q_sample_per_example_time_steps(schedule):
  x0, eps = jnp.ones((3, 2, 2, 1)), jnp.zeros((3, 2, 2, 1))
  t = jnp.array([0, 500, 999])
  got = q_sample(schedule, x0, t, eps)
  np.testing.assert_allclose(
      got[:, 0, 0, 0], np.sqrt(np.asarray(schedule.alphas_cumprod)[[0, 500, 999]]), rtol=1e-6
  )


def test_eps_loss():
  a = jax.random.normal(jax.random.key(0), (2, 4, 4, 3)).astype(jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  loss = eps_loss(a, b)
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(
      loss, np.mean((np.asarray(a, np.float32) - np.asarray(b)) ** 2), rtol=1e-6
  )


# ----------------------------------------------------------------------------- DDIM time-steps


@pytest.mark.parametrize('num_steps', [2, 3, 7, 50, 100, 999, 1000])
def test_ddim_timesteps(num_steps):
  ts = ddim_timesteps(T, num_steps)
  assert ts.dtype == np.int32 and ts.shape == (num_steps,)
  assert ts[0] == 0 and ts[-1] == T - 1
  assert np.all(np.diff(ts) > 0)
  spacing = (T - 1) / (num_steps - 1)
  assert np.all(np.abs(np.diff(ts) - spacing) <= 1)


def test_ddim_timesteps_edge_cases():
  np.testing.assert_array_equal(ddim_timesteps(T, 1), [T - 1])
  np.testing.assert_array_equal(ddim_timesteps(T, T), np.arange(T))
  for bad in (0, T + 1):
    with pytest.raises(ValueError, match='num_steps must be in'):
      ddim_timesteps(T, bad)


# ----------------------------------------------------------------------------- DDIM sampling


def test_ddim_sample_two_steps_matches_hand_computation(schedule):
  """eta = 0, levels t = [0, 999]: x -> (t=999) -> (t=0) -> clean, written out in NumPy."""
  x_T = np.asarray(jax.random.normal(jax.random.key(0), (2, 4, 4, 1)))
  eps_of = lambda x, t: np.sin(x) * (1 + t / 1000)  # depends on both x and t
  got = ddim_sample(
      lambda x, t: jnp.sin(x) * (1 + t[:, None, None, None] / 1000),
      schedule,
      jnp.asarray(x_T),
      num_steps=2,
  )
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  x = x_T.astype(np.float64)
  eps = eps_of(x, 999)
  x0_pred = (x - np.sqrt(1 - abar[999]) * eps) / np.sqrt(abar[999])
  x = np.sqrt(abar[0]) * x0_pred + np.sqrt(1 - abar[0]) * eps
  eps = eps_of(x, 0)
  x = (x - np.sqrt(1 - abar[0]) * eps) / np.sqrt(abar[0])
  np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def test_ddim_sample_matches_gaussian_moments(schedule):
  mu_s = 0.5
  mu = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2), minval=-0.5, maxval=0.5)
  x_T = jax.random.normal(jax.random.key(1), (2048, 4, 4, 2))
  samples = jax.jit(
      lambda x: ddim_sample(gaussian_eps_fn(schedule, mu, mu_s), schedule, x, num_steps=200)
  )(x_T)
  z = (samples - mu) / mu_s
  assert abs(float(z.mean())) < 0.02
  assert abs(float(z.std()) - 1) < 0.04
  np.testing.assert_allclose(samples.mean(0), mu[0], atol=4 * mu_s / math.sqrt(2048))


def test_ddim_sample_with_eta_needs_rng(schedule):
  with pytest.raises(ValueError, match='rng'):
    ddim_sample(lambda x, t: x, schedule, jnp.zeros((1, 2, 2, 1)), num_steps=10, eta=1.0)


def test_ddim_sample_stochastic_with_eta_matches_gaussian_moments(schedule):
  mu_s = 0.5
  mu = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2), minval=-0.5, maxval=0.5)
  x_T = jax.random.normal(jax.random.key(1), (2048, 4, 4, 2))
  sample = jax.jit(
      lambda x, rng: ddim_sample(
          gaussian_eps_fn(schedule, mu, mu_s), schedule, x, num_steps=500, eta=1.0, rng=rng
      )
  )
  a, b = sample(x_T, jax.random.key(2)), sample(x_T, jax.random.key(3))
  assert float(jnp.abs(a - b).mean()) > 0.1
  for samples in (a, b):
    z = (samples - mu) / mu_s
    assert abs(float(z.mean())) < 0.02
    assert abs(float(z.std()) - 1) < 0.05
    np.testing.assert_allclose(samples.mean(0), mu[0], atol=4 * mu_s / math.sqrt(2048))


def test_ddim_sample_clip_x0_bounds_output(schedule):
  x_T = jax.random.normal(jax.random.key(0), (4, 4, 4, 1))
  eps_fn = gaussian_eps_fn(schedule, 0.0, 3.0)
  free = ddim_sample(eps_fn, schedule, x_T, num_steps=20)
  clipped = ddim_sample(eps_fn, schedule, x_T, num_steps=20, clip_x0=True)
  assert float(jnp.abs(free).max()) > 1.5
  assert float(jnp.abs(clipped).max()) <= 1.0


def _numpy_ddim_reference(x, eps_of, levels, *, clip):
  """Float64 DDIM in the official form (DiTi's model/diffusion/ddim.py), written from its formulas.

  x0 = sqrt(1/a) x - sqrt(1/a - 1) eps, clamped to [-1, 1]; eps' = (sqrt(1/a) x - x0) /
  sqrt(1/a - 1); next x = sqrt(a') x0 + sqrt(1 - a') eps'. `levels` lists (t of eps, a, a') per
  step; a = 1 (the clean level) keeps eps as it is.
  """
  for t, a, a_next in levels:
    eps = eps_of(x, t)
    if a < 1:
      x0 = np.sqrt(1 / a) * x - np.sqrt(1 / a - 1) * eps
      if clip:
        x0 = np.clip(x0, -1, 1)
        eps = (np.sqrt(1 / a) * x - x0) / np.sqrt(1 / a - 1)
    else:
      x0 = x
    x = np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps
  return x


@pytest.mark.parametrize('direction', ['sample', 'invert'])
def test_clipped_ddim_matches_float64_reference_and_differs_from_unclipped(schedule, direction):
  """Clamping x0 at every step, both ways, as the official samplers do (issue 16, item 3)."""
  num_steps = 10
  ts = ddim_timesteps(T, num_steps)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  # eps that pushes the predicted x0 well outside [-1, 1] at every level.
  eps_of = lambda x, t: 1.2 + np.sin(3 * x) * (1 + t / 1000)
  jax_eps = lambda x, t: 1.2 + jnp.sin(3 * x) * (1 + t[:, None, None, None] / 1000)
  if direction == 'sample':
    start = np.asarray(jax.random.normal(jax.random.key(0), (3, 4, 4, 2)))
    below = np.r_[1.0, abar[ts][:-1]]
    levels = [(ts[i], abar[ts[i]], below[i]) for i in reversed(range(num_steps))]
    run = lambda clip: ddim_sample(jax_eps, schedule, jnp.asarray(start), num_steps=num_steps,
                                   clip_x0=clip)
  else:
    start = np.asarray(jax.random.uniform(jax.random.key(0), (3, 4, 4, 2), minval=-1, maxval=1))
    below = np.r_[1.0, abar[ts][:-1]]
    levels = [(ts[i], below[i], abar[ts[i]]) for i in range(num_steps)]
    run = lambda clip: ddim_invert(jax_eps, schedule, jnp.asarray(start), num_steps=num_steps,
                                   clip_x0=clip)
  clipped, free = np.asarray(jax.jit(lambda: run(True))()), np.asarray(jax.jit(lambda: run(False))())
  reference = _numpy_ddim_reference(start.astype(np.float64), eps_of, levels, clip=True)
  np.testing.assert_allclose(clipped, reference, rtol=1e-4, atol=1e-4)
  assert np.abs(clipped - free).max() > 0.1


def test_inversion_with_eps_of_the_level_it_leaves_matches_float64_reference(schedule):
  """eps_at='source': each step evaluates eps at the time-step of the level it leaves, as the
  official encoders (`shift_ddim_encode`) do; 'target' (ours) at the level it reaches."""
  num_steps = 10
  ts = ddim_timesteps(T, num_steps)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  below = np.r_[1.0, abar[ts][:-1]]
  eps_of = lambda x, t: 0.3 * np.sin(3 * x) * (1 + t / 100)
  jax_eps = lambda x, t: 0.3 * jnp.sin(3 * x) * (1 + t[:, None, None, None] / 100)
  start = np.asarray(jax.random.uniform(jax.random.key(1), (2, 4, 4, 2), minval=-1, maxval=1))
  source = [(ts[max(i - 1, 0)], below[i], abar[ts[i]]) for i in range(num_steps)]
  run = lambda eps_at: np.asarray(jax.jit(lambda x: ddim_invert(
      jax_eps, schedule, x, num_steps=num_steps, clip_x0=True, eps_at=eps_at))(start))
  from_source, from_target = run('source'), run('target')
  np.testing.assert_allclose(from_source, _numpy_ddim_reference(
      start.astype(np.float64), eps_of, source, clip=True), rtol=1e-4, atol=1e-4)
  assert np.abs(from_source - from_target).max() > 1e-2
  with pytest.raises(ValueError, match="eps_at='middle'"):
    ddim_invert(jax_eps, schedule, jnp.asarray(start), num_steps=2, eps_at='middle')


# ----------------------------------------------------------------------------- DDIM inversion


def test_sampling_exactly_undoes_inversion_when_eps_ignores_x(schedule):
  x0 = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1, maxval=1)
  eps_fn = lambda x, t: jnp.broadcast_to(jnp.cos(t[:, None, None, None] / 100.0), x.shape)
  x_T, rec = invert_then_sample(eps_fn, schedule, x0, num_steps=50)
  assert float(jnp.abs(x_T - x0).max()) > 0.5
  np.testing.assert_allclose(rec, x0, atol=2e-4)


def test_inversion_roundtrip_with_gaussian_optimal_predictor(schedule):
  mu_s = 0.5
  mu = jax.random.uniform(jax.random.key(0), (1, 8, 8, 2), minval=-0.5, maxval=0.5)
  x0 = mu + mu_s * jax.random.normal(jax.random.key(1), (8, 8, 8, 2))
  eps_fn = gaussian_eps_fn(schedule, mu, mu_s)
  errors = {}
  for num_steps in (50, 100):
    x_T, rec = invert_then_sample(eps_fn, schedule, x0, num_steps)
    errors[num_steps] = float(jnp.abs(rec - x0).max())
    assert abs(float(x_T.std()) - 1) < 0.05  # inverted codes look like N(0, I)
  assert errors[50] < 0.15 and errors[100] < 0.075
  assert errors[100] < 0.7 * errors[50]


@pytest.mark.slow
def test_inversion_roundtrip_with_random_dit(schedule):
  model = DiT(depth=2, hidden_size=64, num_heads=2, patch_size=2)
  x0 = jnp.clip(0.5 * jax.random.normal(jax.random.key(4), (2, 16, 16, 3)), -1, 1)
  params = jax.jit(model.init)(jax.random.key(0), x0, jnp.zeros((2,), jnp.int32))
  rng = np.random.default_rng(1)
  params = jax.tree.map(  # adaLN-Zero layers get random values so eps is non-zero and depends on x
      lambda p: p
      if np.any(np.asarray(p))
      else jnp.asarray(0.02 * rng.standard_normal(p.shape), p.dtype),
      params,
  )
  eps_fn = lambda x, t: model.apply(params, x, t)
  assert (
      float(jnp.abs(eps_fn(x0, jnp.array([10, 10])) - eps_fn(x0 + 0.1, jnp.array([10, 10]))).max())
      > 1e-2
  )
  errors = {}
  for num_steps in (50, 100):
    x_T, rec = invert_then_sample(eps_fn, schedule, x0, num_steps)
    errors[num_steps] = float(jnp.abs(rec - x0).max())
    assert float(jnp.abs(x_T - x0).max()) > 0.5
  assert errors[50] < 0.3 and errors[100] < 0.15
  assert errors[100] < 0.7 * errors[50]
