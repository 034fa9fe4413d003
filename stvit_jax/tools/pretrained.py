"""The weights catalogue and its cache: list it, or fetch and convert weights now.

    python -m stvit_jax.tools.pretrained                                # the catalogue, with cache state
    python -m stvit_jax.tools.pretrained --download stvit_r_swin_small  # fetch + convert now
    python -m stvit_jax.tools.pretrained --download deit_small --source hf://owner/repo/file

Downloads and conversions are stvit_jax.weights.hub's (resumable, checksummed,
cached under $XDG_CACHE_HOME/stvit_jax); a later `stvit_jax.create(name,
pretrained=True)` or `--config.init_from=pretrained` reads the cache offline.
"""
from __future__ import annotations

import logging
import sys

from stvit_jax import cli, models
from stvit_jax.runtime import compile_cache
from stvit_jax.weights import catalogue, hub


def listing():
  """The catalogue as a table: model, top-1, format, cached (yes / no), source."""
  names = set(models.names())
  rows = []
  for name, entry in sorted(catalogue.entries().items()):
    target = hub.converted_dir(entry.address, entry.sha256, name, entry.options)
    top1 = f'{entry.top1:.2f}' if entry.top1 is not None else '-'
    rows.append((name + ('' if name in names else ' (?)'), top1, entry.format,
                 'yes' if hub.is_cached(target) else 'no', entry.address))
  header = ('model', 'top-1', 'format', 'cached', 'source')
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
  lines = ['  '.join(h.ljust(w) for h, w in zip(header, widths)) + '  source']
  lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[4] for r in rows]
  return '\n'.join(lines)


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.tools.pretrained', description=__doc__)
  parser.add_argument('--download', metavar='MODEL', nargs='+', default=[],
                      help='fetch and convert these models\' weights into the cache now')
  parser.add_argument('--source', help='with one --download model: this address instead of '
                      'the catalogue entry (hf://... or https://...)')
  compile_cache.add_flag(parser)
  args = parser.parse_args(argv)
  compile_cache.enable(args.compilation_cache_dir)
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  if args.source and len(args.download) != 1:
    parser.error('--source needs exactly one --download MODEL')
  if args.source and not hub.is_address(args.source):
    parser.error(f'--source {args.source!r}: expected hf://owner/repo/file or https://...')
  if not args.download:
    print(listing())
    print(f'\ncache: {hub.cache_root()}; top-1 in %: catalogue entries in stvit_jax/weights/'
          'catalogue.py (python -m stvit_jax.tools.pretrained --help)')
    return 0
  status = 0
  for name in args.download:  # each bad one is reported, the others still fetched
    try:
      print(f'{name}: {hub.resolve(args.source or hub.KEYWORD, model=name)}')
    except ValueError as e:  # PretrainedError and unknown names: one line each, exit 2
      cli.error_line(f'error: {e}')
      status = 2
  return status


if __name__ == '__main__':
  cli.run(main)
