"""The PyTorch peer: diffusers' `DiTTransformer2DModel`, one AdamW train step on fixed data.

Needs the `peer` extra (`pip install -e '.[peer]'`). The step is the one a diffusers training
script runs: forward (optionally under bf16 autocast, optionally `torch.compile`d), MSE to a
target, backward, AdamW (fused on GPU, foreach on CPU), `zero_grad(set_to_none=True)`.

`python -m benchmarks.peer_diffusers` serves the same step in a process of its own
(`benchmarks.throughput` drives it, see `serve`): each side then has its own allocator and
threads, as in real use, and the row records each side's peak memory from the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PROTOCOL_PREFIX = 'PEER '  # marks the lines of `serve`'s replies on stdout
BATCH_KEYS = ('images', 't', 'labels', 'target')


def versions() -> dict:
  import diffusers  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  return {'torch': torch.__version__, 'diffusers': diffusers.__version__}


class DiffusersStep:
  """Builds the peer model and optimiser once; `run(n)` does n train steps on the same batch.

  images: [B, R, R, C] NHWC float32 (transposed to NCHW here), t, labels: [B] int,
  target: [B, R, R, C]. depth / hidden / heads / patch as in `jdiffrep.models.dit.DIT_SIZES`.
  """

  def __init__(self, *, depth: int, hidden: int, heads: int, patch: int, resolution: int,
               num_classes: int, images: np.ndarray, t: np.ndarray, labels: np.ndarray,
               target: np.ndarray, dtype: str, compile_model: bool, learning_rate: float,
               b1: float, b2: float, weight_decay: float, threads: int | None):
    import diffusers  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    self.torch = torch
    if threads:
      torch.set_num_threads(threads)
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.device_kind = (torch.cuda.get_device_name(self.device) if self.device.type == 'cuda'
                        else 'cpu')
    torch.manual_seed(0)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=hidden // heads,
        in_channels=images.shape[-1], out_channels=target.shape[-1], num_layers=depth,
        sample_size=resolution, patch_size=patch, num_embeds_ada_norm=num_classes)
    self.model = model.to(self.device).train()
    self.num_params = sum(p.numel() for p in self.model.parameters())
    self.forward = torch.compile(self.model) if compile_model else self.model
    optimizer_kind = {'fused': True} if self.device.type == 'cuda' else {'foreach': True}
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=learning_rate, betas=(b1, b2),
                                       weight_decay=weight_decay, **optimizer_kind)
    to_device = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
    self.images = to_device(images.transpose(0, 3, 1, 2))
    self.target = to_device(target.transpose(0, 3, 1, 2))
    self.t, self.labels = to_device(t), to_device(labels)
    self.autocast = dtype == 'bfloat16'

  def _step(self) -> None:
    torch = self.torch
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      out = self.forward(self.images, timestep=self.t, class_labels=self.labels).sample
    loss = torch.nn.functional.mse_loss(out.float(), self.target)
    loss.backward()
    self.optimizer.step()
    self.optimizer.zero_grad(set_to_none=True)
    self.last_loss = loss.detach()

  def peak_device_memory_bytes(self) -> int | None:
    """The most GPU memory torch has held (None on CPU, where torch keeps no count)."""
    if self.device.type != 'cuda':
      return None
    return self.torch.cuda.max_memory_allocated(self.device)

  def sync(self) -> None:
    if self.device.type == 'cuda':
      self.torch.cuda.synchronize()

  def run(self, steps: int) -> float:
    """Seconds for `steps` train steps, synchronised only before and after."""
    self.sync()
    start = time.perf_counter()
    for _ in range(steps):
      self._step()
    self.sync()
    return time.perf_counter() - start


def start_step(**kwargs) -> tuple[DiffusersStep, dict]:
  """Builds a `DiffusersStep` (its keyword arguments) and runs its first, untimed step
  (torch.compile's compile, allocator warm-up); returns it with the row's description of it."""
  start = time.perf_counter()
  step = DiffusersStep(**kwargs)
  step.run(1)
  return step, {'versions': versions(), 'device_kind': step.device_kind,
                'torch_threads': step.torch.get_num_threads(), 'autocast_bf16': step.autocast,
                'num_params': step.num_params,
                'compile_seconds': round(time.perf_counter() - start, 2)}


def _reply(stream, message: dict) -> None:
  stream.write(PROTOCOL_PREFIX + json.dumps(message) + '\n')
  stream.flush()


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
  """The peer's side of `benchmarks.throughput`'s rounds, one JSON object per line.

  In: the `DiffusersStep` keyword arguments, with `batch_file`: an .npz of `BATCH_KEYS` in place
  of the arrays; then {"run": n} per round; then {"stop": true}. Out (each line prefixed with
  `PROTOCOL_PREFIX`; anything else a library prints is not a reply): the step's description
  after one untimed step, {"seconds": s, "loss": the round's last loss} per round, and the
  process's peak memory at the end.
  """
  from benchmarks import provenance  # pylint: disable=g-import-not-at-top
  spec = json.loads(stdin.readline())
  with np.load(spec.pop('batch_file'), allow_pickle=False) as batch:
    arrays = {key: batch[key] for key in BATCH_KEYS}
  step, description = start_step(**spec, **arrays)
  _reply(stdout, description)
  for line in stdin:
    command = json.loads(line)
    if 'run' not in command:
      break
    seconds = step.run(int(command['run']))
    _reply(stdout, {'seconds': seconds, 'loss': float(step.last_loss)})
  _reply(stdout, {'process_peak_rss_bytes': provenance.peak_rss_bytes(),
                  'peak_device_memory_bytes': step.peak_device_memory_bytes()})


class PeerProcess:
  """The peer's step in a child process (`serve`), timed the same way:
  `run(steps)` -> seconds, measured in the child around its steps alone (`last_loss`: the
  loss of the last step)."""

  def __init__(self, spec: dict, batch: dict):
    from benchmarks import provenance  # pylint: disable=g-import-not-at-top
    self._batch_dir = tempfile.TemporaryDirectory(prefix='peer_batch_')
    batch_file = os.path.join(self._batch_dir.name, 'batch.npz')
    np.savez(batch_file, images=batch['image'], t=batch['t'], labels=batch['label'],
             target=batch['target'])
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.peer_diffusers'], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=provenance.REPO_ROOT)
    self._send({**spec, 'batch_file': batch_file})
    self.info = self._receive()

  def _send(self, message: dict) -> None:
    self._process.stdin.write(json.dumps(message) + '\n')
    self._process.stdin.flush()

  def _receive(self) -> dict:
    for line in self._process.stdout:
      if line.startswith(PROTOCOL_PREFIX):
        return json.loads(line[len(PROTOCOL_PREFIX):])
    raise RuntimeError(f'The peer process exited (code {self._process.wait()}) before it '
                       'replied; its error is printed above.')

  def run(self, steps: int) -> float:
    self._send({'run': steps})
    reply = self._receive()
    self.last_loss = reply['loss']
    return reply['seconds']

  def close(self) -> dict:
    """Stops the child; returns its peak memory (process RSS, device)."""
    self._send({'stop': True})
    final = self._receive()
    self._process.wait()
    self._batch_dir.cleanup()
    return final


if __name__ == '__main__':
  serve()
