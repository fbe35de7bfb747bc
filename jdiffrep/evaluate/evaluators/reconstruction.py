"""DDIM reconstruction with each stage's learned z: MSE, PSNR and a grid of test images."""

from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jdiffrep import images
from jdiffrep.data import pipeline
from jdiffrep.evaluate.evaluators import base


def reconstruction(method, frozen, params, test_images: np.ndarray, *, num_steps: int,
                   out_path) -> dict:
  """DDIM encode -> decode with the learned z: MSE, PSNR (images in [-1, 1]) and a grid PNG."""
  recon_fn = jax.jit(lambda p, f, x: method.reconstruct(p, f, x, num_steps=num_steps))
  recon = np.clip(np.asarray(recon_fn(params, frozen, jnp.asarray(test_images))), -1.0, 1.0)
  mse = float(np.mean((recon - test_images) ** 2))
  psnr = float(10 * np.log10(4.0 / mse))  # peak-to-peak range of [-1, 1] is 2
  rows = [pipeline.to_uint8(test_images[:8]), pipeline.to_uint8(recon[:8])]
  grid = images.make_grid(np.concatenate(rows), num_columns=min(8, len(test_images)),
                          upscale=max(1, 96 // test_images.shape[1]))
  return {'mse': mse, 'psnr_db': psnr, 'num_images': int(len(test_images)),
          'ddim_steps': num_steps, 'grid': images.save_png(out_path, grid)}


class Reconstruction(base.Evaluator):
  """`reconstruction` of the first `config.evaluate.reconstruction_images` test images, by every
  stage that decodes its z, with `config.sample.ddim_steps`."""
  needs = ('reconstructs',)

  def run(self, context, entry):
    test_images = pipeline.first_images(context.config.dataset,
                                        context.eval_config.reconstruction_images)
    results = {}
    for name, stage in context.stages.items():
      if not stage.representation.reconstructs:
        continue
      results[name] = reconstruction(
          stage.method, stage.frozen, stage.params, test_images,
          num_steps=context.config.sample.ddim_steps,
          out_path=context.out_dir / f'reconstruction_{name}.png')
      logging.info('Reconstruction with %s z: PSNR %.2f dB.', name, results[name]['psnr_db'])
    return {'reconstruction': results}
