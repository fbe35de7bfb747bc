r"""Plots probe accuracy against training step for the checkpoint-probe rows of a results JSONL.

  python -m benchmarks.learning_curves \
      --results=benchmarks/results/cpu_shapes_v1_1_experiments.jsonl \
      --baseline=runs/eval_d256/evaluate/results.json \
      --out=benchmarks/results/cpu_shapes_learning_curves.png

A curve is every row with a `probe` and a `step` that share a `--workdir` in their `command`
(one training run, probed at several checkpoints). Left: test mean AP of the attribute probe
(DiTi, PDAE); right: mean categorical accuracy of the linear probe (sdae at its first t).
`--baseline` (an evaluate stage's results.json) adds the raw-pixel probes as dashed lines.
"""

from __future__ import annotations

import collections
import json
import re

from absl import app
from absl import flags
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

_FLAGS: dict = {}


def _define_flags() -> None:
  """Flags of the command line only (tests import this module beside others with --out)."""
  _FLAGS.update(
      results=flags.DEFINE_string('results',
                                  'benchmarks/results/cpu_shapes_v1_1_experiments.jsonl',
                                  'JSONL with checkpoint-probe rows.'),
      baseline=flags.DEFINE_string('baseline', None,
                                   'An evaluate stage results.json (pixel lines).'),
      out=flags.DEFINE_string('out', 'benchmarks/results/cpu_shapes_learning_curves.png',
                              'Where the PNG goes.'))


def curves(rows: list[dict]) -> dict[str, list[dict]]:
  """{workdir: rows sorted by step} for the rows that probe a checkpoint of a run."""
  runs = collections.defaultdict(list)
  for row in rows:
    if 'probe' not in row or 'step' not in row:
      continue
    match = re.search(r'--workdir=(\S+)', row['command'])
    if match is None:
      raise ValueError(f'A probe row names no --workdir in its command: {row["command"]!r}')
    runs[match.group(1).rstrip('/').split('/')[-1]].append(row)
  return {name: sorted(points, key=lambda r: r['step']) for name, points in runs.items()}


def plot(runs: dict[str, list[dict]], out: str, baseline: dict | None = None) -> None:
  """Writes the two-panel PNG of `curves(...)` to `out`; `baseline`: an evaluate results.json."""
  fig, (ax_map, ax_cat) = plt.subplots(1, 2, figsize=(11, 4.2))
  for index, (name, points) in enumerate(runs.items()):
    style = {'color': f'C{index}', 'marker': 'o', 'label': name}
    steps = [p['step'] for p in points]
    feature = next(iter(points[0]['categorical']))  # 'diti', or sdae's first t
    ax_cat.plot(steps, [p['categorical'][feature]['linear'] for p in points], **style)
    if all('attribute_probe_test_mean_ap' in p for p in points):
      ax_map.plot(steps, [p['attribute_probe_test_mean_ap'] for p in points], **style)
  if baseline is not None:
    ax_map.axhline(baseline['attribute_probe']['pixels']['test_mean_ap'], ls='--', c='gray',
                   label='raw pixels')
    ax_cat.axhline(baseline['categorical_probe_summary']['pixels']['linear'], ls='--', c='gray',
                   label='raw pixels')
  ax_map.set(title='attribute probe: test mean AP', xlabel='training step', ylabel='mean AP')
  ax_cat.set(title='categorical linear probe: mean test accuracy', xlabel='training step',
             ylabel='accuracy')
  for ax in (ax_map, ax_cat):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  results, baseline_path, out = (_FLAGS[name].value for name in ('results', 'baseline', 'out'))
  with open(results) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  runs = curves(rows)
  if not runs:
    raise SystemExit(f'No checkpoint-probe rows (with "probe" and "step") in {results}.')
  baseline = None
  if baseline_path:
    with open(baseline_path) as f:
      baseline = json.load(f)
  plot(runs, out, baseline)
  print(f'Wrote {out} ({len(runs)} runs: {", ".join(runs)}).')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
