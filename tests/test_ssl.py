"""SimCLR / SimSiam baselines, their augmentations and the embedding-health diagnostics."""

import colorsys
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiffrep import augment
from jdiffrep import config as config_lib
from jdiffrep import health
from jdiffrep import methods
from jdiffrep import train
from tensorboard.backend.event_processing import event_accumulator
from jdiffrep.methods import ssl

SHAPE = (32, 32, 3)


def _official_nt_xent_float64(z1, z2, temperature):
  """The official `NT_XentLoss` (model/representation/ssl/simclr.py) in float64 numpy."""
  normalize = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  z1, z2 = normalize(np.float64(z1)), normalize(np.float64(z2))
  n = z1.shape[0]
  reps = np.concatenate([z1, z2])
  sim = reps @ reps.T
  positives = np.concatenate([np.diag(sim, n), np.diag(sim, -n)])[:, None]
  mask = np.eye(2 * n, dtype=bool)
  mask[n:, :n] = mask[:n, n:] = mask[:n, :n]
  negatives = sim[~mask].reshape(2 * n, -1)
  logits = np.concatenate([positives, negatives], axis=1) / temperature
  log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), axis=1,
                                       keepdims=True)) - logits.max(1, keepdims=True)
  return -np.mean(log_softmax[:, 0])


@pytest.mark.parametrize('temperature', [0.5, 0.1])
def test_nt_xent_equals_the_official_loss_in_float64(temperature):
  z1, z2 = np.random.default_rng(0).normal(size=(2, 6, 5)).astype(np.float32)
  loss, accuracy = ssl.nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature)
  np.testing.assert_allclose(float(loss), _official_nt_xent_float64(z1, z2, temperature),
                             rtol=1e-5)
  # Positives are row i of the other view: pairing z1 with a permuted z2 is another loss, and
  # views that equal each other are each other's nearest row.
  shuffled = _official_nt_xent_float64(z1, z2[::-1], temperature)
  assert abs(float(loss) - shuffled) > 1e-3
  assert float(ssl.nt_xent(jnp.asarray(z1), jnp.asarray(z1), temperature)[1]) == 1.0
  assert 0.0 <= float(accuracy) <= 1.0


def test_simsiam_target_branch_gets_no_gradient():
  p1, z1, p2, z2 = jax.random.normal(jax.random.key(0), (4, 6, 5))
  grads = jax.grad(ssl.simsiam_loss, argnums=(0, 1, 2, 3))(p1, z1, p2, z2)
  assert np.abs(np.asarray(grads[0])).sum() > 0 and np.abs(np.asarray(grads[2])).sum() > 0
  np.testing.assert_array_equal(grads[1], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)
  cos = lambda a, b: np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  expected = -0.5 * cos(np.float64(p1), np.float64(z2)).mean() - 0.5 * cos(
      np.float64(p2), np.float64(z1)).mean()
  np.testing.assert_allclose(float(ssl.simsiam_loss(p1, z1, p2, z2)), expected, rtol=1e-5)


def test_colour_operations_match_torchvision_semantics():
  image = np.random.default_rng(1).uniform(size=(4, 5, 3)).astype(np.float32)
  hsv = np.asarray(augment.rgb_to_hsv(jnp.asarray(image)))
  reference = np.array([[colorsys.rgb_to_hsv(*px) for px in row] for row in image])
  np.testing.assert_allclose(hsv, reference, atol=1e-5)
  np.testing.assert_allclose(augment.hsv_to_rgb(jnp.asarray(hsv)), image, atol=1e-5)
  shifted = np.array([[colorsys.hsv_to_rgb((h + 0.3) % 1.0, s, v) for h, s, v in row]
                      for row in reference])
  np.testing.assert_allclose(augment.adjust_hue(jnp.asarray(image), 0.3), shifted, atol=1e-5)
  gray = image @ np.array(augment.GRAY_WEIGHTS, np.float32)
  np.testing.assert_allclose(augment.adjust_brightness(jnp.asarray(image), 1.5),
                             np.clip(1.5 * image, 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(jnp.asarray(image), 0.5),
                             np.clip(0.5 * image + 0.5 * gray.mean(), 0, 1), atol=1e-6)
  np.testing.assert_allclose(augment.adjust_saturation(jnp.asarray(image), 0.0),
                             np.repeat(gray[..., None], 3, -1), atol=1e-6)


def test_blur_is_a_normalised_gaussian_with_reflected_borders():
  assert [augment.blur_kernel_size(s) for s in (32, 64, 128)] == [3, 7, 13]
  flat = jnp.full((8, 8, 3), 0.4)
  np.testing.assert_allclose(augment.gaussian_blur(flat, 1.0, 3), 0.4, atol=1e-6)
  impulse = np.zeros((9, 9, 1), np.float32)
  impulse[4, 4] = 1.0
  out = np.asarray(augment.gaussian_blur(jnp.asarray(impulse), 1.0, 3))[..., 0]
  taps = np.exp(-0.5 * np.array([-1.0, 0.0, 1.0]) ** 2)
  taps /= taps.sum()
  np.testing.assert_allclose(out[3:6, 3:6], np.outer(taps, taps), atol=1e-6)
  assert abs(out.sum() - 1.0) < 1e-5


def test_views_are_seeded_independent_and_follow_the_probabilities():
  images = jax.random.uniform(jax.random.key(0), (64, *SHAPE), minval=-1.0, maxval=1.0)
  view = augment.ViewAugmentation()
  a = augment.augment_batch(images, jax.random.key(1), view)
  np.testing.assert_array_equal(a, augment.augment_batch(images, jax.random.key(1), view))
  assert not np.allclose(a, augment.augment_batch(images, jax.random.key(2), view))
  assert float(jnp.min(a)) >= -1.0 and float(jnp.max(a)) <= 1.0
  off = augment.ViewAugmentation(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
                                 blur_prob=0.0)
  np.testing.assert_allclose(augment.augment_batch(images, jax.random.key(1), off), images,
                             atol=1e-6)
  only_gray = augment.ViewAugmentation(flip_prob=0.0, jitter_prob=0.0, grayscale_prob=1.0,
                                       blur_prob=0.0)
  gray = np.asarray(augment.augment_batch(images, jax.random.key(1), only_gray))
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
  only_flip = augment.ViewAugmentation(flip_prob=1.0, jitter_prob=0.0, grayscale_prob=0.0,
                                       blur_prob=0.0)
  np.testing.assert_allclose(augment.augment_batch(images, jax.random.key(1), only_flip),
                             images[:, :, ::-1], atol=1e-6)
  with pytest.raises(ValueError, match='grayscale_prob'):
    augment.ViewAugmentation.from_config({'grayscale_prob': 1.5})


def test_health_tells_a_spread_embedding_from_a_collapsed_one():
  rng = np.random.default_rng(0)
  spread = health.embedding_health(jnp.asarray(rng.normal(size=(512, 16))))
  assert 0.8 / 4 < float(spread['std_mean']) < 1.2 / 4  # 1/sqrt(16)
  assert float(spread['effective_rank']) > 14
  line = np.outer(rng.normal(size=512), rng.normal(size=16)) + 3.0
  collapsed = health.embedding_health(jnp.asarray(line))
  assert float(collapsed['effective_rank']) == pytest.approx(1.0, abs=1e-3)
  point = health.embedding_health(jnp.ones((64, 16)) + 1e-9 * rng.normal(size=(64, 16)))
  assert float(point['std_mean']) < 1e-6
  # k equal singular values: effective rank k.
  basis = np.linalg.qr(rng.normal(size=(64, 64)))[0]
  block = basis[:, :5] @ np.eye(5, 16) * 10.0
  assert float(health.effective_rank(jnp.asarray(block - block.mean(0)))) == pytest.approx(
      5.0, rel=2e-2)


def test_a_denoiser_that_ignores_z_is_reported_with_the_settings_to_try():
  assert health.health_warnings({'health_ema/std_mean': 0.01}) == []  # no z_reliance: no sdae
  assert health.health_warnings({'health_ema/z_reliance': health.LOW_Z_RELIANCE}) == []
  assert health.health_warnings({'health_ema/z_reliance': 97.5}) == []
  (warning,) = health.health_warnings({'health_ema/z_reliance': 1.002})
  assert 'factor 1.002' in warning and 'config.sdae.loss_weight=pdae' in warning


@pytest.mark.parametrize('kind', ssl.KINDS)
def test_ssl_methods_train_the_encoder_with_adam_and_the_head_with_sgd(tiny_config, kind):
  tiny_config.method = kind
  tiny_config.optim.warmup_steps = 0
  tiny_config.optim.learning_rate = 1e-3
  method = methods.make_method(tiny_config, SHAPE)
  tx, lr = train.method_optimizer(tiny_config, method)
  state = train.init_train_state(method, tx, jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (16, *SHAPE), minval=-1.0, maxval=1.0)
  step = jax.jit(lambda s: train.train_step(s, {}, {'image': images}, method=method, tx=tx,
                                            learning_rate=lr, ema_decay=0.9))
  new_state, metrics = step(state)
  assert np.isfinite(float(metrics['loss']))
  assert float(metrics['loss']) == pytest.approx(0.01 * float(metrics['ssl_loss']), rel=1e-6)
  # Adam moves every encoder weight by about its rate at step 1; SGD moves the head by the rate
  # times the (0.01-weighted) gradient plus decay, far less.
  delta = lambda part: max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(new_state.params[part]), jax.tree.leaves(state.params[part])))
  assert delta('encoder') == pytest.approx(1e-3, rel=0.05)
  assert 0 < delta('head') < 1e-4
  losses = []
  for _ in range(8):
    state, metrics = step(state)
    losses.append(float(metrics['ssl_loss']))
  assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_ssl_flip_is_refused_where_it_changes_labels(tiny_config):
  tiny_config.pipeline = ('simclr',)
  tiny_config.simclr.augment.flip_prob = 0.5
  with pytest.raises(ValueError, match='simclr.augment.flip_prob'):
    config_lib.validate_config(tiny_config)


def test_trainer_logs_health_and_writes_the_augmentation_grid(tiny_config, tmp_path):
  tiny_config.method = 'simsiam'
  tiny_config.num_train_steps = 4
  tiny_config.log_every_steps = 2
  results = train.train_and_evaluate(tiny_config, str(tmp_path))
  health_keys = {f'{prefix}/{name}' for prefix in ('health', 'health_ema')
                 for name in ('std_mean', 'std_min', 'std_reference', 'effective_rank')}
  assert set(results['embedding_health']) == health_keys
  assert results['embedding_health']['health/std_reference'] == pytest.approx(
      1 / np.sqrt(tiny_config.diti.latent_dim))
  assert 1.0 <= results['embedding_health']['health/effective_rank'] <= 32
  assert json.loads((tmp_path / 'results.json').read_text())['embedding_health'] == (
      results['embedding_health'])
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={'tensors': 0})
  events.Reload()
  assert health_keys <= set(events.Tags()['tensors'])
  # The preview is the augmentation grid: originals, view 1, view 2, a row of 8 each (4 images).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(results['artifacts']['samples'][-1]))
  cell = SHAPE[0] * max(1, 128 // SHAPE[0]) + 1  # upscaled image + 1 pixel of padding
  assert grid.shape[:2] == (3 * cell + 1, 8 * cell + 1)
