"""The PyTorch peer: diffusers' `DiTTransformer2DModel`, one AdamW train step on fixed data.

Needs the `peer` extra (`pip install -e '.[peer]'`). The step is the one a diffusers training
script runs: forward (optionally under bf16 autocast, optionally `torch.compile`d), MSE to a
target, backward, AdamW (fused on GPU, foreach on CPU), `zero_grad(set_to_none=True)`.
"""

from __future__ import annotations

import time

import numpy as np


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
