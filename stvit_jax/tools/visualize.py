"""Pictures of what the semantic tokens attend to in the STGM.

    python -m stvit_jax.tools.visualize --model stvit_deit_small --image photo.jpg \
        [--init_from DIR] [--layer 2] [--unit 0] --out stgm.png

Draws, over the (resized, centre-cropped) input image, one coloured map per
semantic token (its STGM attention over the image patches, averaged over
heads and renormalised to sum to 1 over the patches) and a hard assignment of
every patch to the token that attends to it most. Works for `stvit_deit_*`
(global STGM: layer 1 keys are the image tokens, later layers [S, X]) and
`stvit_r_swin_*` / `stvit_swin_*` (layer 1 per 7x7 window over its 10x10
key patch, layer 2 global over the 14x14 stage-3 grid), trained or not.

Video (`stvit_video_swin_*`, `stvit_r_video_swin_*`): `--video FILE` (mp4 etc.
through PyAV, or an animated GIF) draws a strip of frames, one per temporal
token, each with its frame's hard assignment (token i has the same colour in
every frame: it starts from the same window), and `--gif` also writes it animated.

    python -m stvit_jax.tools.visualize --model stvit_video_swin_tiny --video clip.mp4 --out strip.png
"""
from __future__ import annotations

import colorsys
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw

from stvit_jax import cli, models
from stvit_jax.data import files
from stvit_jax.runtime import compile_cache
from stvit_jax.train import checkpoint, run_weights
from stvit_jax.weights import factory

DEFAULT_MODEL = 'stvit_deit_small'


def load_image(path, size):
  """An image file -> (size, size, 3) uint8: what evaluation sees of it (the eval
  pipeline's decode, resize and centre crop: stvit_jax.data.files)."""
  return files.read_image(path, files.image_config(size))


def load_clip(path, size, num_frames):
  """A video file -> (num_frames, size, size, 3) uint8: the centre view of evaluation's
  middle clip (stvit_jax.data.files.read_clip), back in pixels for drawing."""
  cfg = files.video_config(size, num_frames, clips=1, crops=1)
  view = files.read_clip(path, cfg)[0]
  pixels = (view * np.float32(cfg.std) + np.float32(cfg.mean)) * 255.0
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def normalise(image):
  """float32 model input of a uint8 image (ImageNet mean and std, as evaluation)."""
  return files.normalise(image, files.image_config(image.shape[0]))


def _with_stgm():
  return ', '.join(f'{f.name}_*' for f in models.FAMILIES.values() if f.stgm)


def _is_video(model):
  return models.registry.input_kind(model) == 'video'


def _stgm(model):
  """'global' (STViT-DeiT) or 'windowed' (STViT-Swin): the registry's record of the
  family that built `model`."""
  fam = models.family_of(model)
  if fam is None or fam.stgm is None:
    raise ValueError(f'{type(model).__name__} has no STGM to draw; use one of the '
                     f'{_with_stgm()} models')
  return fam.stgm


def stgm_layers(model):
  """How many STGM attention maps the model returns per image, and what they are."""
  stgm = _stgm(model)
  if stgm == 'global':
    return [f'layer {i + 1}' for i in range(model.stgm_depth)]
  stage = model.layers[2]
  units = sum(stage.role(i) == 'stgm1' for i in range(len(stage.blocks)))
  return [f'unit {u} layer {l}' for u in range(units) for l in (1, 2)]


def semantic_maps(model, images, *, layer=None, unit=0):
  """Per-token attention over the image patches.

  images (B, H, W, 3) normalised. `layer` is the STGM layer (1-based; default
  the last), `unit` the STViT-R dumbbell unit. Returns maps (B, M, gh, gw),
  float32, each token's map >= 0 and summing to 1 over the gh x gw patches,
  and the patch size in pixels.
  """
  stgm = _stgm(model)
  attn = _stgm_attention(model, jnp.asarray(images, jnp.float32))
  if _is_video(model):  # clips (B, T, H, W, 3): maps per temporal token, (B*D, M, gh, gw)
    attn = [np.asarray(a).reshape(-1, *a.shape[2:]) for a in attn]
    images = images[:, 0]
  if stgm == 'global':
    depth = len(attn)
    layer = depth if layer is None else layer
    if not 1 <= layer <= depth:
      raise ValueError(f'--layer={layer}: {type(model).__name__} has STGM layers 1..{depth}')
    grid = model.grid
    w = np.asarray(attn[layer - 1], np.float32).mean(axis=1)  # (B, M, keys)
    maps = w[..., -grid * grid:]  # the image tokens are the last keys in every layer
    return _renormalise(maps).reshape(*maps.shape[:2], grid, grid), images.shape[1] // grid
  layer = 2 if layer is None else layer
  units = len(attn) // 2
  if layer not in (1, 2) or not 0 <= unit < units:
    raise ValueError(f'--layer={layer} --unit={unit}: {type(model).__name__} has STGM '
                     f'layers 1, 2 in units 0..{units - 1}')
  stage = model.layers[2]
  (gh, gw) = stage.grid
  w = np.asarray(attn[2 * unit + layer - 1], np.float32)
  if layer == 2:  # (B, h, S, S + gh*gw): the image tokens are the last keys
    maps = w.mean(axis=1)[..., -gh * gw:]
  else:  # (B, nW, h, t*t, t*t + 100): each window's tokens see its 10x10 key patch
    first = next(i for i in range(len(stage.blocks)) if stage.role(i) == 'stgm1')
    index = stage.blocks[first].key_index  # (nW, 100) flat positions in the gh x gw grid
    t = stage.t
    local = w.mean(axis=2)[..., -index.shape[1]:]  # (B, nW, t*t, 100)
    b, nw, tt, _ = local.shape
    full = np.zeros((b, nw, tt, gh * gw), np.float32)
    for i in range(nw):
      np.add.at(full[:, i], (slice(None), slice(None), index[i]), local[:, i])
    # Window tokens -> the semantic raster grid (window row, token row, window col, token col).
    n = int(round(nw ** 0.5))
    full = full.reshape(b, n, n, t, t, -1).transpose(0, 1, 3, 2, 4, 5)
    maps = full.reshape(b, nw * tt, gh * gw)
  return _renormalise(maps).reshape(*maps.shape[:2], gh, gw), images.shape[1] // gh


def _stgm_attention(model, images):
  graphdef, state = nnx.split(model)
  return _forward_attention(graphdef, state, images)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model structure and shape
def _forward_attention(graphdef, state, images):
  return nnx.merge(graphdef, state)(images, train=False)[1]['stgm_attn']


def _renormalise(maps):
  return maps / np.maximum(maps.sum(-1, keepdims=True), np.finfo(np.float32).tiny)


def hard_assignment(maps):
  """(B, M, gh, gw) token maps -> (B, gh, gw) index of the token that attends most to each patch."""
  return np.argmax(maps, axis=1)


def palette(n):
  """n well separated RGB colours (golden-ratio hues, alternating lightness)."""
  cols = []
  for i in range(n):
    r, g, b = colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, 0.45 + 0.15 * (i % 2), 0.85)
    cols.append((int(r * 255), int(g * 255), int(b * 255)))
  return np.asarray(cols, np.uint8)


def _upsample(grid_values, patch):
  return np.repeat(np.repeat(grid_values, patch, axis=0), patch, axis=1)


def render(image, maps, assignment, patch, *, title='', columns=None, panel=None):
  """One PNG: the image, the hard assignment, then one coloured map per token.

  image (H, W, 3) uint8; maps (M, gh, gw); assignment (gh, gw).
  """
  m = maps.shape[0]
  colors = palette(m)
  base = image.astype(np.float32)
  gray = base.mean(-1, keepdims=True) * 0.5 + 64  # dimmed backdrop for the maps
  panels = [(Image.fromarray(image), 'input')]
  seg = colors[assignment].astype(np.float32)
  seg = _upsample(seg, patch)
  over = (0.45 * base + 0.55 * seg).astype(np.uint8)
  panels.append((Image.fromarray(over), 'hard assignment'))
  for i in range(m):
    lo, hi = float(maps[i].min()), float(maps[i].max())
    strength = (maps[i] - lo) / max(hi - lo, 1e-12)  # contrast stretched per token
    s = _upsample(strength, patch)[..., None]
    tinted = gray * (1 - 0.85 * s) + colors[i].astype(np.float32) * (0.85 * s)
    uniform = 1.0 / maps[i].size  # the peak as a multiple of uniform attention
    panels.append((Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8)),
                   f'token {i}  {hi / uniform:.1f}x'))
  size = panel or image.shape[0]
  cols = columns or int(np.ceil(np.sqrt(len(panels) * 1.6)))
  rows = -(-len(panels) // cols)
  label, head = 14, (22 if title else 0)
  sheet = Image.new('RGB', (cols * (size + 4) + 4, head + rows * (size + label + 4) + 4), 'white')
  draw = ImageDraw.Draw(sheet)
  if title:
    draw.text((6, 4), title, fill='black')
  for k, (img, text) in enumerate(panels):
    r, c = divmod(k, cols)
    x, y = 4 + c * (size + 4), head + 4 + r * (size + label + 4)
    sheet.paste(img.resize((size, size), Image.LANCZOS), (x, y + label))
    if k >= 2:  # the token's colour as a swatch next to its label
      draw.rectangle((x, y + 2, x + 10, y + 11), fill=tuple(int(v) for v in colors[k - 2]))
      x += 14
    draw.text((x, y), text, fill='black')
  # Token indices on the assignment panel, at the centroid of each token's patches.
  r, c = divmod(1, cols)
  x0, y0 = 4 + c * (size + 4), head + 4 + r * (size + label + 4) + label
  scale = size / (assignment.shape[0] * patch)
  for i in range(m):
    ys, xs = np.nonzero(assignment == i)
    if len(ys):
      cx = x0 + (xs.mean() + 0.5) * patch * scale
      cy = y0 + (ys.mean() + 0.5) * patch * scale
      draw.text((cx - 4, cy - 6), str(i), fill='white', stroke_width=2, stroke_fill='black')
  return sheet


def render_strip(frames, assignments, patch, *, title='', panel=None):
  """Two rows, one column per temporal token: the frame, and its hard assignment.

  frames (D, H, W, 3) uint8, assignments (D, gh, gw). Returns (sheet, overlays)."""
  colors = palette(int(assignments.max()) + 1)
  overlays = [(0.45 * f.astype(np.float32) + 0.55 * _upsample(colors[a].astype(np.float32),
                                                              patch)).astype(np.uint8)
              for f, a in zip(frames, assignments)]
  size = panel or frames.shape[1]
  head, label = (22 if title else 0), 14
  d = len(frames)
  sheet = Image.new('RGB', (d * (size + 4) + 4, head + 2 * (size + label + 4) + 4), 'white')
  draw = ImageDraw.Draw(sheet)
  if title:
    draw.text((6, 4), title, fill='black')
  for t in range(d):
    for row, (img, text) in enumerate(((frames[t], f'temporal token {t}'),
                                       (overlays[t], 'hard assignment'))):
      x, y = 4 + t * (size + 4), head + 4 + row * (size + label + 4)
      draw.text((x, y), text, fill='black')
      sheet.paste(Image.fromarray(img).resize((size, size), Image.LANCZOS), (x, y + label))
  return sheet, overlays


def build(name, init_from=None, seed=0, raw_weights=False, **overrides):
  """Model `name` (an STViT: it has an STGM to draw), fresh with `seed` or with the weights
  of `init_from` (a directory or address, as predict's); any head class count will do.
  A training run's directory names its model (`name` is then checked against it) and
  gives the weights its evaluation used (`raw_weights`: not the EMA)."""
  if run_weights.is_run(init_from):
    _check_stgm(name or run_weights.model_of(run_weights.read_config(init_from))[0])
    return run_weights.create(init_from, name=name, overrides=overrides, raw=raw_weights)[0]
  if raw_weights:
    raise ValueError("--raw_weights: only for a training run's directory as --init_from")
  name = name or DEFAULT_MODEL
  _check_stgm(name)
  model = models.create(name, seed=seed, **overrides)
  if init_from:
    # The classifier head plays no part in the STGM maps: any class count will do.
    factory.load(model, init_from, replace_head=True, name=name, options=overrides)
  return model


def _check_stgm(name):
  if not models.family(name).stgm:
    raise ValueError(f'--model={name!r} has no STGM to draw; choose a '
                     f'{_with_stgm()} model, e.g. stvit_deit_small')


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.visualize', description=__doc__)
  parser.add_argument('--model', help=f'default {DEFAULT_MODEL}, or the model of a run '
                      'directory given as --init_from')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--image', help='any image file Pillow can read')
  source.add_argument('--video', help='video models: a video file (PyAV) or animated GIF')
  parser.add_argument('--num_frames', type=int, default=16, help='frames of the clip (--video)')
  parser.add_argument('--gif', help='--video: also write the strip as an animated GIF here')
  parser.add_argument('--out', required=True, help='PNG to write')
  parser.add_argument('--init_from', help='weights directory (python -m stvit_jax.tools.convert) '
                      "or a training run's workdir (its model, its newest readable checkpoint)")
  parser.add_argument('--raw_weights', action='store_true', help='with a run directory: its '
                      'trained parameters, not their EMA')
  parser.add_argument('--layer', type=int, default=None,
                      help='STGM layer, 1-based (default: the last; Swin: 1 local, 2 global)')
  parser.add_argument('--unit', type=int, default=0, help='STViT-R dumbbell unit (0..2)')
  parser.add_argument('--seed', type=int, default=0, help='init seed of an untrained model')
  parser.add_argument('--panel', type=int, default=None, help='panel side in pixels')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      type=cli.key_value, help='model option, e.g. --set num_semantic=36')
  compile_cache.add_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.enable(args.compilation_cache_dir)
  try:
    overrides = dict(args.set)
    if run_weights.is_run(args.init_from):  # the run names its model
      args.model = args.model or run_weights.model_of(run_weights.read_config(args.init_from))[0]
    args.model = args.model or DEFAULT_MODEL
    model = build(args.model, args.init_from, args.seed, args.raw_weights, **overrides)
  except (run_weights.RunMismatch, checkpoint.CheckpointError) as err:  # not a usage error
    cli.error_line(f'error: {err}')
    return cli.USAGE
  except ValueError as err:
    parser.error(str(err))
  size = getattr(model, 'img_size', 224)
  video = _is_video(model)
  if video != bool(args.video):
    parser.error(f'--model {args.model} takes ' + ('--video (a clip)' if video else
                                                   '--image (video models take --video)'))
  if video:
    return _main_video(args, model, size)
  try:
    image = load_image(args.image, size)
  except files.FileError as err:  # the input, not the usage: no '(see --help)'
    cli.error_line(f'error: --image {err}')
    return cli.USAGE
  try:
    maps, patch = semantic_maps(model, normalise(image)[None], layer=args.layer,
                                 unit=args.unit)
  except ValueError as err:
    parser.error(str(err))
  assignment = hard_assignment(maps)[0]
  source = args.init_from or f'untrained (seed {args.seed})'
  layer = args.layer or (model.stgm_depth if _stgm(model) == 'global' else 2)
  which = f'STGM layer {layer}' + (f', unit {args.unit}' if _stgm(model) == 'windowed' else '')
  title = (f'{args.model}, {source}: {which}, {maps.shape[1]} semantic tokens; '
           'maps contrast-stretched per token, label: peak / uniform attention')
  sheet = render(image, maps[0], assignment, patch, title=title, panel=args.panel)
  sheet.save(args.out, optimize=True)
  print(f'wrote {args.out} ({sheet.width}x{sheet.height}): {title}')
  return 0


def _main_video(args, model, size):
  try:
    clip = load_clip(args.video, size, args.num_frames)  # a FileError names the file
    maps, patch = semantic_maps(model, normalise(clip)[None], layer=args.layer, unit=args.unit)
  except ValueError as err:
    cli.error_line(f'error: {err}')
    return 2
  assignments = hard_assignment(maps)  # (D, gh, gw)
  step = args.num_frames // len(assignments)  # frames per temporal token (patch time 2)
  source = args.init_from or f'untrained (seed {args.seed})'
  title = (f'{args.model}, {source}: STGM layer {args.layer or 2}, {maps.shape[1]} semantic '
           f'tokens per frame, {len(assignments)} temporal tokens')
  sheet, overlays = render_strip(clip[::step][:len(assignments)], assignments, patch,
                                 title=title, panel=args.panel)
  sheet.save(args.out, optimize=True)
  if args.gif:
    first, *rest = [Image.fromarray(o) for o in overlays]
    first.save(args.gif, save_all=True, append_images=rest, duration=250, loop=0)
  print(f'wrote {args.out} ({sheet.width}x{sheet.height})'
        + (f' and {args.gif}' if args.gif else '') + f': {title}')
  return 0


if __name__ == '__main__':
  cli.run(main)
