"""Kinetics-400/600/700 as TFDS datasets, from the user's own download (CVDF layout).

  python -m stvit_jax.data.builders.kinetics --name kinetics400 --manual_dir ~/k400 \\
      --data_dir ~/tensorflow_datasets [--workers 16]

decodes every video with PyAV in parallel processes (progress with videos/s and
ETA; rerunning an interrupted command resumes it shard by shard) and writes an
ordinary TFDS dataset: `tfds.builder('kinetics400', data_dir=...)` reads it once
this module is imported (copy the folder to gs:// like any TFDS dataset).
Each example: `video` (frames, short side 256, native frame rate, one JPEG per
frame), `label` (class id = index of the label name in sorted order), `video_id`,
`fps`, `num_frames`. Missing and undecodable files are skipped and listed in
`<data_dir>/kinetics400/1.0.0/conversion_report.json`.
"""
import csv
import os
import sys

from etils import epath
import tensorflow_datasets as tfds

from stvit_jax import cli
from stvit_jax.data.builders import video_convert

HEADER = ('label', 'youtube_id', 'time_start', 'time_end', 'split')
CSV_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}  # csv name -> TFDS split
VIDEO_SUFFIXES = ('.mp4', '.webm', '.mkv')

LAYOUT = """\
  <manual_dir>/annotations/train.csv, val.csv [, test.csv]
      header: label,youtube_id,time_start,time_end,split (labels with commas quoted)
  <manual_dir>/train/, val/ [, test/]
      {youtube_id}_{time_start:06d}_{time_end:06d}.mp4, directly (flat) or in
      per-class folders
  <manual_dir>/replacement/ (optional): files of the same names that replace
      listed ones (CVDF's replacement_for_corrupted_k400)"""

INSTRUCTIONS = f"""\
Kinetics cannot be downloaded by TFDS (YouTube clips). Get the CVDF copy
(https://github.com/cvdfoundation/kinetics-dataset: k400.sh / k600.sh / k700_2020.sh
download and extract it, annotations included) and point --manual_dir at it:
{LAYOUT}
Then: python -m stvit_jax.data.builders.kinetics --name NAME --manual_dir DIR --data_dir DIR"""


class LayoutError(ValueError):
  """The manual_dir does not hold a Kinetics download in the expected layout."""


def read_csv(path):
  """[(label, video_id)] of one annotation CSV; None for a test CSV without labels."""
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    header = tuple(h.strip() for h in next(reader, ()))
    if header == HEADER[1:]:  # Kinetics-700 test.csv: no labels, nothing to train or score
      return None
    if header != HEADER:
      raise LayoutError(f'{path}: columns {list(header)}; expected exactly '
                        f'{",".join(HEADER)} (the CVDF annotation CSVs)')
    rows = []
    for line, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) != len(HEADER):
        raise LayoutError(f'{path}:{line}: {len(row)} fields in {row}; expected '
                          f'{len(HEADER)} ({",".join(HEADER)}; quote labels with commas)')
      label, youtube_id, start, end, _ = row
      try:
        start, end = int(float(start)), int(float(end))
      except ValueError:
        raise LayoutError(f'{path}:{line}: time_start={start!r}, time_end={end!r} are not '
                          'numbers') from None
      rows.append((label.strip(), f'{youtube_id}_{start:06d}_{end:06d}'))
  return rows


def index_videos(folder):
  """{file stem: path} of the video files under `folder`, at any depth (flat or per class)."""
  found = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      stem, suffix = os.path.splitext(name)
      if suffix.lower() in VIDEO_SUFFIXES:
        found.setdefault(stem, os.path.join(root, name))
  return found


def scan(manual_dir, splits=None):
  """({tfds split: [Item]}, sorted class names) of a Kinetics download.

  Missing files become Items with path None (skipped and reported by the conversion).
  """
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise LayoutError(f'manual_dir={manual_dir!r} is not a folder. Expected:\n{LAYOUT}')
  notes = os.path.join(manual_dir, 'annotations')
  csvs = {c: os.path.join(notes, f'{c}.csv') for c in CSV_SPLITS
          if os.path.isfile(os.path.join(notes, f'{c}.csv'))}
  if 'train' not in csvs:
    raise LayoutError(f'no annotations/train.csv in manual_dir={manual_dir!r}. Expected:\n{LAYOUT}')
  wanted = splits or [CSV_SPLITS[c] for c in csvs]
  unknown = set(wanted) - set(CSV_SPLITS.values())
  if unknown:
    raise LayoutError(f'splits {sorted(unknown)} are not Kinetics splits; valid: '
                      f'{list(CSV_SPLITS.values())}')
  rows = {}
  for c, path in csvs.items():
    split = CSV_SPLITS[c]
    if split in wanted:
      rows[split] = read_csv(path)
      if rows[split] is None:
        if splits:
          raise LayoutError(f'{path} has no label column, so split {split!r} cannot be built')
        print(f'note: {path} has no labels; split {split!r} is not built', file=sys.stderr)
        del rows[split]
  absent = [s for s in wanted if s not in rows and s != 'test']
  if absent:
    raise LayoutError(f'no annotation CSV for split(s) {absent} in {notes}. Expected:\n{LAYOUT}')
  class_names = sorted({label for label, _ in read_csv(csvs['train'])})
  replacements = {}
  for entry in sorted(os.listdir(manual_dir)):
    if entry.startswith('replacement') and os.path.isdir(os.path.join(manual_dir, entry)):
      replacements.update(index_videos(os.path.join(manual_dir, entry)))
  out = {}
  for split, split_rows in rows.items():
    c = next(k for k, v in CSV_SPLITS.items() if v == split)
    folder = os.path.join(manual_dir, c)
    found = index_videos(folder) if os.path.isdir(folder) else {}
    if not found:
      raise LayoutError(f'no video files ({", ".join(VIDEO_SUFFIXES)}) under {folder} for '
                        f'the {len(split_rows)} rows of {csvs[c]}. Expected:\n{LAYOUT}')
    foreign = sorted({label for label, _ in split_rows} - set(class_names))
    if foreign:
      raise LayoutError(f'{csvs[c]} has labels not in train.csv: {foreign[:5]}')
    out[split] = [video_convert.Item(vid, label, replacements.get(vid, found.get(vid)))
                  for label, vid in split_rows]
  return out, class_names


class VideoClassification(tfds.core.GeneratorBasedBuilder):
  """Videos with one label each, written by `video_convert.convert` (parallel, resumable)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'PyAV decode, JPEG frames, native frame rate.'}
  SHORT_SIDE = 256
  NUM_CLASSES = None  # the canonical class count, checked against what was found
  HOMEPAGE = 'https://github.com/cvdfoundation/kinetics-dataset'

  # TFDS 4.9.10 finds this itself via the `importlib_resources` backport, which
  # it imports but does not declare for Python >= 3.9; the answer is this file.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def __init__(self, *, class_names=None, **kwargs):
    self._class_names = class_names  # None when reading: the names come from the dataset
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(video_convert.features_spec(self._class_names)),
        supervised_keys=('video', 'label'),
        homepage=self.HOMEPAGE)

  def _split_generators(self, dl_manager):
    raise NotImplementedError(
        f'{self.name} is converted in parallel by `python -m stvit_jax.data.builders.kinetics '
        f'--name {self.name} --manual_dir DIR --data_dir DIR`, not by tfds build')

  def _generate_examples(self, **kwargs):
    raise NotImplementedError  # see _split_generators


class Kinetics400(VideoClassification):
  """Kinetics-400: 10 s YouTube clips of 400 human actions (Kay et al. 2017)."""
  NUM_CLASSES = 400
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS


class Kinetics600(VideoClassification):
  """Kinetics-600: 10 s YouTube clips of 600 human actions (Carreira et al. 2018)."""
  NUM_CLASSES = 600
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS


class Kinetics700(VideoClassification):
  """Kinetics-700(-2020): 10 s YouTube clips of 700 human actions (Carreira et al. 2019)."""
  NUM_CLASSES = 700
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS


# Registered with TFDS under their snake-case names when this module is imported.
BUILDERS = {b.name: b for b in (Kinetics400, Kinetics600, Kinetics700)}


def prepare(builder_cls, manual_dir, *, data_dir=None, workers=1, splits=None,
            videos_per_shard=200, progress_every_s=10.0):
  """Converts a download in `manual_dir` (unless already done); returns the read builder."""
  listing, class_names = scan(manual_dir, splits)
  reader = builder_cls(data_dir=data_dir)
  if reader.is_prepared():
    print(f'{reader.name} is already prepared in {reader.data_path}')
    return reader
  n = builder_cls.NUM_CLASSES
  if n is not None and len(class_names) != n:
    print(f'note: train.csv names {len(class_names)} classes, not {n}; class ids are the '
          f'{len(class_names)} sorted names found', file=sys.stderr)
  writer = builder_cls(data_dir=data_dir, class_names=class_names)
  video_convert.convert(writer, listing, workers=workers, videos_per_shard=videos_per_shard,
                        short_side=builder_cls.SHORT_SIDE, progress_every_s=progress_every_s)
  return builder_cls(data_dir=data_dir)


def main(argv=None):
  parser = cli.ArgumentParser(prog='python -m stvit_jax.data.builders.kinetics', description=__doc__)
  parser.add_argument('--name', required=True, choices=sorted(BUILDERS))
  parser.add_argument('--manual_dir', required=True, help='the Kinetics download:\n' + LAYOUT)
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data_dir to write into (default: TFDS default)')
  parser.add_argument('--workers', type=int, default=os.cpu_count(),
                      help='decoding processes (default: all cores)')
  parser.add_argument('--splits', default=None,
                      help='comma-separated subset of train,validation,test (default: all '
                           'with a labelled CSV)')
  parser.add_argument('--videos_per_shard', type=int, default=200)
  parser.add_argument('--progress_every_s', type=float, default=10.0)
  args = parser.parse_args(argv)
  if args.workers < 1:
    parser.error(f'--workers={args.workers}: expected an int >= 1')
  if args.videos_per_shard < 1:
    parser.error(f'--videos_per_shard={args.videos_per_shard}: expected an int >= 1')
  splits = args.splits.split(',') if args.splits else None
  try:
    prepare(BUILDERS[args.name], args.manual_dir, data_dir=args.data_dir,
            workers=args.workers, splits=splits, videos_per_shard=args.videos_per_shard,
            progress_every_s=args.progress_every_s)
  except (LayoutError, ValueError) as e:
    cli.error_line(f'error: {e}')
    return 2
  except KeyboardInterrupt:
    print('\ninterrupted: finished shards are kept; rerun the same command to resume',
          file=sys.stderr)
    return 130
  return 0


if __name__ == '__main__':
  cli.run(main)
