"""Decoded windows packed for the transfer to the accelerator: one uint8 buffer per device.

With the pixel work on the accelerator the host only decodes each image's window
(RandomResizedCrop's for training, the centre one for evaluation) at its own size;
`data/device_resize.py` resizes it in the step. The windows vary in size, and a
fixed square canvas per image would ship 3x or more the bytes of a 224x224 image,
so a batch leaves the host as one buffer per device holding its rows' windows back
to back, with their offsets and sizes:

  buffer  uint8 (devices, capacity)  window b's (h_b, w_b, 3) pixels from offsets[b]
  offsets int32 (B,)                 relative to the row's device buffer
  heights, widths int32 (B,)

Rows are split over devices in order (device d holds rows [d * B / D, (d + 1) * B / D)),
as the batch sharding splits any other per-row array. The capacity is fixed (the
step's shapes are static): `capacity_factor` times the bytes of a size x size image
per row. A device whose windows do not fit has its largest windows resized down on
the host (antialiased bicubic) until they do; `Packed.shrunk` counts them, so a
benchmark can show how often that happens. Windows whose longer side exceeds
`max_side` (the device canvas) are shrunk the same way.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Packed:
  buffer: np.ndarray    # uint8 (devices, capacity)
  offsets: np.ndarray   # int32 (B,)
  heights: np.ndarray   # int32 (B,)
  widths: np.ndarray    # int32 (B,)
  shrunk: int           # windows resized on the host to fit

  def as_batch(self):
    return {'window': self.buffer, 'window_offset': self.offsets,
            'window_height': self.heights, 'window_width': self.widths}


def capacity(size, rows_per_device, capacity_factor):
  """Bytes of one device's buffer: capacity_factor x a (size, size, 3) uint8 image per row,
  rounded up to 128 bytes (TPU tiles)."""
  return int(math.ceil(capacity_factor * rows_per_device * size * size * 3 / 128) * 128)


def shrink(window, scale):
  """The window resized by `scale` (< 1) with antialiased bicubic, as uint8."""
  h, w = window.shape[:2]
  new = (max(1, int(h * scale)), max(1, int(w * scale)))
  x = tf.image.resize(window, new, method='bicubic', antialias=True)
  return np.asarray(tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8))


def _fit_side(window, max_side):
  h, w = window.shape[:2]
  if max(h, w) <= max_side:
    return window, 0
  return shrink(window, max_side / max(h, w)), 1


def _fit_device(windows, cap):
  """Shrinks the largest windows of one device's rows until their bytes fit `cap`."""
  windows, shrunk = list(windows), 0
  while sum(x.size for x in windows) > cap:
    i = int(np.argmax([x.size for x in windows]))
    excess = sum(x.size for x in windows) - cap
    target = max(windows[i].size - excess, windows[i].size // 4, 3)
    windows[i] = shrink(windows[i], math.sqrt(target / windows[i].size) * 0.999)
    shrunk += 1
  return windows, shrunk


def pack(windows, *, devices, size, max_side, capacity_factor):
  """A list of B uint8 (h, w, 3) windows (this process's rows, in order) -> `Packed`."""
  if len(windows) % devices:
    raise ValueError(f'{len(windows)} rows do not split over {devices} devices')
  per = len(windows) // devices
  cap = capacity(size, per, capacity_factor)
  buffer = np.zeros((devices, cap), np.uint8)
  offsets, heights, widths, shrunk = [], [], [], 0
  for d in range(devices):
    mine = []
    for x in windows[d * per:(d + 1) * per]:
      x, n = _fit_side(np.asarray(x, np.uint8), max_side)
      mine.append(x)
      shrunk += n
    mine, n = _fit_device(mine, cap)
    shrunk += n
    at = 0
    for x in mine:
      buffer[d, at:at + x.size] = x.reshape(-1)
      offsets.append(at)
      heights.append(x.shape[0])
      widths.append(x.shape[1])
      at += x.size
  as_int = lambda v: np.asarray(v, np.int32)  # noqa: E731
  return Packed(buffer, as_int(offsets), as_int(heights), as_int(widths), shrunk)
