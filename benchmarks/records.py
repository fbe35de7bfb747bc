"""Whether a benchmark row can be trusted: an idle machine, paired rounds that agree.

On 2 shared cores a load of 8 slowed PyTorch 20x and XLA far less, and rows measured so claimed
'4x faster than diffusers' where the idle ratio was 0.47-0.69. So a run waits for an idle
machine, records the ratio of every pair of rounds, and says why it is `busy` when it is;
`benchmarks.report` leaves busy rows out.
"""

from __future__ import annotations

import os
import re
import statistics
import time

IDLE_LOAD_PER_CORE = 0.5  # idle: the 1-minute load is below this per usable core
BUSY_SPREAD = 0.2  # busy: paired ratios spread more than this around their median


def wait_for_idle(max_load: float, timeout_s: float, *, poll_s: float = 5.0,
                  getloadavg=os.getloadavg, sleep=time.sleep) -> tuple[float, float]:
  """Polls the 1-minute load until it is below `max_load` or `timeout_s` has passed.

  Returns (the last load read, seconds waited).
  """
  waited = 0.0
  load = getloadavg()[0]
  while load >= max_load and waited < timeout_s:
    pause = min(poll_s, timeout_s - waited)
    sleep(pause)
    waited += pause
    load = getloadavg()[0]
  return round(load, 2), round(waited, 1)


def paired_ratios(ours_seconds: list[float], peer_seconds: list[float]) -> dict:
  """Ours/peer throughput per round (peer seconds / our seconds, same steps), with their median,
  range and relative spread (max - min) / median."""
  if len(ours_seconds) != len(peer_seconds) or not ours_seconds:
    raise ValueError(f'need one peer round per round of ours; got {len(ours_seconds)} and '
                     f'{len(peer_seconds)}')
  ratios = [p / o for o, p in zip(ours_seconds, peer_seconds)]
  median = statistics.median(ratios)
  return {'paired_ratios': [round(r, 3) for r in ratios], 'ratio_median': round(median, 3),
          'ratio_range': [round(min(ratios), 3), round(max(ratios), 3)],
          'ratio_spread': round((max(ratios) - min(ratios)) / median, 3)}


def busy_reasons(load_start: float, cores: int, *, load_per_core: float = IDLE_LOAD_PER_CORE,
                 ratio_spread: float | None = None, max_spread: float = BUSY_SPREAD,
                 cpu: bool = True) -> list[str]:
  """Why a row's timings cannot be trusted ([] when they can).

  The host's load counts only for CPU rows (`cpu`): an accelerator's step does not share the
  host's cores with other jobs the way a CPU step does.
  """
  reasons = []
  if cpu and load_start >= load_per_core * cores:
    reasons.append(f'1-minute load {load_start} at the start, not below {load_per_core} per '
                   f'usable core ({cores})')
  if ratio_spread is not None and ratio_spread > max_spread:
    reasons.append(f'paired ratios spread {ratio_spread:.0%} around their median (limit '
                   f'{max_spread:.0%})')
  return reasons


def is_busy(record: dict) -> bool:
  """The row's own `busy` mark; CPU rows from before the mark existed are busy when their
  1-minute load at the start was not below 0.5 per usable core of their host."""
  if 'busy' in record:
    return bool(record['busy'])
  if record.get('platform', 'cpu') != 'cpu':
    return False
  cores = re.search(r'(\d+) cores usable', record.get('host', ''))
  load = record.get('load_avg_start')
  return bool(cores and load is not None and load >= IDLE_LOAD_PER_CORE * int(cores.group(1)))
