r"""Peak memory and wall time of the evaluate stage as the dataset grows (CelebA's layout).

  python -m benchmarks.evaluate_memory --train_images=20000 [--root=DIR] [--out=FILE] \
      [--note=...] [--config.evaluate.feature_memory_mb=512 ...]

Writes a synthetic CelebA in its original on-disk format (aligned 178x218 JPEGs,
`list_attr_celeba.txt`, `list_eval_partition.txt`; `--train_images` train images and an eighth of
that each for validation and test, CelebA's proportions), prepares it at 64x64, trains every
stage of `configs/celeba.py` for two steps with a small denoiser (the evaluation's cost does not
depend on how far they trained), then runs only the evaluate stage in a child process under
`/usr/bin/time -v` and appends its peak RSS and wall time to
`benchmarks/results/cpu_evaluate_memory.jsonl`. Source, prepared data and trained stages are kept
under `--root` per size and reused by the next run.

What the evaluation holds in memory is what grows with the dataset: every representation of
every image of three splits (CelebA's raw pixels alone: 162,770 x 12,288 float32, 8 GB). The
feature store spills sets past `config.evaluate.feature_memory_mb` to disk and the probes stream
them, so the peak should stay nearly flat from 20k to 160k images.

The synthetic crop holds two colour blocks: 'Smiling' makes the left one bright, 'Male' the right
one; the other 38 attributes are random, so a probe has something to find but nothing more.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np

from benchmarks import provenance
from benchmarks import records

_TRAIN_IMAGES = flags.DEFINE_integer('train_images', 20_000, 'Train split size; validation and '
                                     'test get an eighth of it each.', lower_bound=64)
_ROOT = flags.DEFINE_string('root', '/tmp/jdiffrep_evaluate_memory',
                            'Where the synthetic source, prepared data and runs are kept (local).')
_OUT = flags.DEFINE_string('out', '', 'JSONL to append to (default benchmarks/results/'
                           'cpu_evaluate_memory.jsonl; "-" for none).')
_NOTE = flags.DEFINE_string('note', '', 'Free-form note stored with the row.')
_IDLE_TIMEOUT = flags.DEFINE_float('idle_timeout', 600.0, 'Seconds to wait for an idle machine.')
_EVALUATE_ONLY = flags.DEFINE_string('evaluate_only', None, 'Internal: the child that runs only '
                                     'the evaluate stage of this workdir.')

TIME = '/usr/bin/time'


def small_celeba_config():
  """configs/celeba.py with a small denoiser and the evaluation's fixed-size parts made cheap.

  Kept as CelebA's: the 40 attributes, the full splits, the DiTi encoder and its 512-dim z, the
  probe protocol (15 epochs, raw features), pixels as a representation. Made cheap because they
  do not grow with the dataset: the denoiser (XXS/8), the sweep (t = 0 and 100), the
  counterfactuals' DDIM steps and their reader's training.
  """
  from configs import celeba  # pylint: disable=g-import-not-at-top
  config = celeba.get_config()
  config.model.name = 'XXS/8'
  config.model.dtype = 'float32'
  config.batch_size = 8
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.sample_every_steps = 0
  config.sample.num_images = 4
  config.sample.ddim_steps = 10
  config.stage_overrides = {stage: {'num_train_steps': 2} for stage in config.pipeline
                            if stage != 'evaluate'}
  config.evaluate.embedding_timesteps = (0, 100)
  config.evaluate.dm_feature_timesteps = (0, 100)
  config.evaluate.counterfactual_invert_steps = 20
  config.evaluate.counterfactual_generate_steps = 10
  config.evaluate.classifier_train_images = 2000
  config.evaluate.classifier_steps = 100
  return config


_CONFIG = config_flags.DEFINE_config_dict('config', small_celeba_config())


def _write_image(args) -> None:
  path, seed, smiling, male = args
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jdiffrep.data import registry  # pylint: disable=g-import-not-at-top
  from jdiffrep.data import sources  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  top, left, height, width = registry.CELEBA_CROP
  image = np.full((*sources.CELEBA_IMAGE_SIZE, 3), 128, np.uint8)
  crop = np.broadcast_to(rng.integers(40, 120, (1, 1, 3), dtype=np.uint8),
                         (height, width, 3)).copy()
  crop[:, :width // 2] += np.uint8(120 if smiling else 0)
  crop[:, width // 2:] += np.uint8(120 if male else 0)
  image[top:top + height, left:left + width] = crop
  Image.fromarray(image).save(path, quality=90)


def write_synthetic_celeba(root: str, train_images: int, seed: int = 0) -> None:
  """CelebA's original layout with train_images / 8 validation and test images each."""
  from jdiffrep.data import sources  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(root, 'list_eval_partition.txt')):
    return
  image_dir = os.path.join(root, 'img_align_celeba')
  os.makedirs(image_dir, exist_ok=True)
  names = sources.CELEBA_ATTRIBUTE_NAMES
  sizes = (train_images, train_images // 8, train_images // 8)
  total = sum(sizes)
  values = np.random.default_rng(seed).random((total, len(names))) < 0.4
  files = [f'{i + 1:06d}.jpg' for i in range(total)]
  smiling, male = names.index('Smiling'), names.index('Male')
  jobs = [(os.path.join(image_dir, f), seed * 10_000_019 + i, values[i, smiling], values[i, male])
          for i, f in enumerate(files)]
  with concurrent.futures.ProcessPoolExecutor(provenance.cores()) as pool:
    for done, _ in enumerate(pool.map(_write_image, jobs, chunksize=512)):
      if done % 20_000 == 0:
        print(f'synthetic CelebA: {done}/{total} images', flush=True)
  split_of = np.repeat(np.arange(3), sizes)
  with open(os.path.join(root, 'list_attr_celeba.txt'), 'w') as f:
    f.write(f'{total}\n{" ".join(names)}\n')
    f.writelines(name + ' ' + ' '.join('1' if v else '-1' for v in row) + '\n'
                 for name, row in zip(files, values))
  with open(os.path.join(root, 'list_eval_partition.txt'), 'w') as f:  # written last: complete
    f.writelines(f'{name} {split}\n' for name, split in zip(files, split_of))


def _time_output(path: str) -> dict:
  """Peak RSS (GiB) and wall seconds from `/usr/bin/time -v`'s report."""
  text = open(path).read()
  rss_kib = int(re.search(r'Maximum resident set size \(kbytes\): (\d+)', text).group(1))
  wall = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', text).group(1)
  seconds = sum(float(part) * 60 ** i for i, part in enumerate(reversed(wall.split(':'))))
  return {'peak_rss_gib': round(rss_kib / 2 ** 20, 3), 'wall_seconds': round(seconds, 1)}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
  if _EVALUATE_ONLY.value:  # the measured child: the evaluate stage alone
    from jdiffrep.evaluate import pipeline_eval  # pylint: disable=g-import-not-at-top
    workdir = _EVALUATE_ONLY.value
    with open(os.path.join(workdir, 'benchmark_data_dir')) as f:
      config.dataset.data_dir = f.read()
    pipeline_eval.evaluate(config, workdir)
    return

  from jdiffrep import prepare  # pylint: disable=g-import-not-at-top
  from jdiffrep import run  # pylint: disable=g-import-not-at-top
  size = _TRAIN_IMAGES.value
  root = os.path.join(_ROOT.value, f'train{size}')
  source, data_dir, workdir = (os.path.join(root, d) for d in ('source', 'tfds', 'run'))
  write_synthetic_celeba(source, size)
  prepared = prepare.prepare('celeba', source, data_dir)
  config.dataset.data_dir = data_dir
  training = config.copy_and_resolve_references()
  training.pipeline = tuple(s for s in config.pipeline if s != 'evaluate')
  run.run(training, workdir)  # two steps per stage; a finished stage is only reloaded
  with open(os.path.join(workdir, 'benchmark_data_dir'), 'w') as f:
    f.write(data_dir)

  load_start, waited = records.wait_for_idle(records.IDLE_LOAD_PER_CORE * provenance.cores(),
                                             _IDLE_TIMEOUT.value)
  time_report = os.path.join(root, 'time.txt')
  child = [sys.executable, '-m', 'benchmarks.evaluate_memory', f'--evaluate_only={workdir}',
           *overrides]
  start = provenance.utc_now()
  subprocess.run([TIME, '-v', '-o', time_report, *child], cwd=provenance.REPO_ROOT, check=True)
  measured = _time_output(time_report)
  with open(os.path.join(workdir, 'evaluate', 'results.json')) as f:
    results = json.load(f)
  reasons = records.busy_reasons(load_start, provenance.cores())
  row = {
      'date': start,
      'command': 'python -m benchmarks.evaluate_memory ' + shlex.join(sys.argv[1:]),
      'measured_command': f'{TIME} -v ' + shlex.join(child),
      'bench': 'evaluate_memory',
      'commit': provenance.commit(),
      'platform': 'cpu',
      'host': provenance.host(),
      'versions': provenance.versions(),
      'load_avg_start': load_start,
      'idle_wait_seconds': waited,
      'load_avg_end': round(os.getloadavg()[0], 2),
      'busy': bool(reasons),
      'busy_reasons': reasons,
      'note': _NOTE.value,
      'num_examples': prepared.num_examples,
      'evaluated_examples': results.get('num_examples'),
      'feature_memory_mb': config.evaluate.feature_memory_mb,
      'probe_chunk_mb': config.evaluate.probe_chunk_mb,
      'probe_epochs': config.evaluate.probe_epochs,
      'features_streamed_from_disk': results.get('features_streamed_from_disk'),
      'pixels_test_mean_ap': results['attribute_probe']['pixels']['test_mean_ap'],
      'diti_test_mean_ap': results['attribute_probe']['diti']['test_mean_ap'],
      **measured,
  }
  provenance.append_row(row, _OUT.value or os.path.join(
      provenance.REPO_ROOT, 'benchmarks', 'results', 'cpu_evaluate_memory.jsonl'))


if __name__ == '__main__':
  app.run(main)
