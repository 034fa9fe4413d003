"""Video files -> an ordinary TFDS dataset, decoded in parallel processes, resumable by shard.

Used by the Kinetics builders (`data/builders/kinetics.py`) and the embedded moving-digits
dataset alike. Each video is decoded with PyAV (its wheel bundles FFmpeg), every
frame resized to a short side (256 for Kinetics) at the native frame rate and
stored as its own JPEG in a `tfds.features.Video`, so a reader decodes only the
frames it samples.

Why not `GeneratorBasedBuilder.download_and_prepare`: it decodes in one process
and cannot resume, and full Kinetics-400 is 35-130 core-hours of decoding. Here
the videos are listed, shuffled with a fixed seed and cut into shards; each shard
is one task of a process pool, written to a temporary name and renamed when
complete, with a `.done.json` beside it (its count, bytes and skipped videos).
An interrupted run, started again, redoes only the shards without `.done.json`.
All of it happens in `<data_dir>/<name>/<version>.incomplete/`; when every shard
is done, the TFDS metadata is written and the folder renamed to `<version>/`, so
nothing half-written ever looks like a finished dataset.

Missing files and files that fail to decode are skipped, counted, printed and
listed in `<version>/conversion_report.json`; a file that breaks off mid-stream
keeps the frames decoded before the error and is listed as `partial`.
"""
import concurrent.futures
import dataclasses
import io
import json
import math
import multiprocessing
import os
import sys
import time

from etils import epath
import numpy as np

REPORT = 'conversion_report.json'
PLAN = 'plan.json'


@dataclasses.dataclass(frozen=True)
class Item:
  """One listed video: `path` is None when the file was not found."""
  video_id: str
  label: str
  path: str | None


class DecodeError(Exception):
  pass


def resized_size(height, width, short_side):
  """(h, w) with the shorter side = short_side (None: unchanged), aspect kept."""
  if short_side is None:
    return height, width
  scale = short_side / min(height, width)
  return (max(1, round(height * scale)), max(1, round(width * scale)))


def decode(path, *, short_side, quality=90):
  """(list of JPEG bytes, fps, error or None) of every frame of the video at `path`.

  Raises DecodeError when no frame can be decoded; an error after some frames
  is returned (the frames before it are kept and the video reported as partial).
  """
  import av  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  if os.path.getsize(path) == 0:
    raise DecodeError('zero-length file')
  frames, fps, error, size = [], 0.0, None, None
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise DecodeError('no video stream')
      stream = container.streams.video[0]
      rate = stream.average_rate or stream.guessed_rate
      fps = float(rate) if rate else 0.0
      for frame in container.decode(stream):
        if size is None:
          size = resized_size(frame.height, frame.width, short_side)
        rgb = frame.reformat(width=size[1], height=size[0], format='rgb24',
                             interpolation='BILINEAR').to_ndarray()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
        frames.append(buf.getvalue())
  except DecodeError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # FFmpeg's errors have many types
    if not frames:
      raise DecodeError(f'{type(e).__name__}: {e}') from e
    error = f'{type(e).__name__}: {e}'
  if not frames:
    raise DecodeError('no decodable frames')
  if fps <= 0:
    raise DecodeError('no frame rate in the stream')
  return frames, fps, error


# ---------------------------------------------------------------- one shard (in a worker)

_counter = None  # multiprocessing.Value: videos processed by all workers (progress)


def _init_worker(counter):
  global _counter
  _counter = counter
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _tick():
  if _counter is not None:
    with _counter.get_lock():
      _counter.value += 1


def shard_name(name, split, index, count):
  return f'{name}-{split}.tfrecord-{index:05d}-of-{count:05d}'


def write_shard(task):
  """Decodes `task['items']` into one TFRecord shard; returns its .done.json content."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = tfds.features.FeaturesDict(features_spec(task['class_names']))
  final = epath.Path(task['dir']) / task['file']
  tmp = final.with_name(final.name + '.tmp')
  done = {'file': task['file'], 'count': 0, 'num_bytes': 0, 'num_frames': 0,
          'missing': [], 'failed': [], 'partial': []}
  cpu0 = time.process_time()
  with tf.io.TFRecordWriter(os.fspath(tmp)) as writer:
    for video_id, label, path in task['items']:
      try:
        if path is None:
          done['missing'].append(video_id)
          continue
        try:
          frames, fps, error = decode(path, short_side=task['short_side'])
        except DecodeError as e:
          done['failed'].append({'video_id': video_id, 'path': path, 'error': str(e)})
          continue
        if error:
          done['partial'].append({'video_id': video_id, 'path': path, 'error': error,
                                  'frames_kept': len(frames)})
        record = features.serialize_example({
            'video': frames, 'label': label, 'video_id': video_id,
            'fps': np.float32(fps), 'num_frames': np.int32(len(frames))})
        writer.write(record)
        done['count'] += 1
        done['num_bytes'] += len(record)
        done['num_frames'] += len(frames)
      finally:
        _tick()
  done['cpu_s'] = time.process_time() - cpu0  # this worker's CPU time on the shard
  tmp.rename(final)
  _write_json(final.with_name(final.name + '.done.json'), done)
  return done


def features_spec(class_names):
  """The feature dict of every video dataset here (class_names None: read from disk)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  label = (tfds.features.ClassLabel(names=list(class_names)) if class_names is not None
           else tfds.features.ClassLabel())
  return {
      # Each frame its own JPEG: readers decode only the frames they sample.
      'video': tfds.features.Video(shape=(None, None, None, 3), encoding_format='jpeg'),
      'label': label,
      'video_id': tfds.features.Text(),  # {youtube_id}_{start:06d}_{end:06d}
      'fps': np.float32,
      'num_frames': np.int32,
  }


def _write_json(path, obj):
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(obj, indent=1))
  tmp.rename(path)


# ---------------------------------------------------------------- the whole conversion


def plan_shards(items, videos_per_shard, seed=0):
  """Items in a seeded random order (classes mixed in every shard), cut into shards."""
  order = np.random.default_rng(seed).permutation(len(items))
  count = max(1, math.ceil(len(items) / videos_per_shard))
  return [[items[i] for i in chunk] for chunk in np.array_split(order, count)]


def _progress(done_videos, total, start_done, t0, skipped, label):
  elapsed = max(time.time() - t0, 1e-9)
  rate = (done_videos - start_done) / elapsed
  eta = (total - done_videos) / rate if rate > 0 else float('inf')
  eta_s = time.strftime('%H:%M:%S', time.gmtime(eta)) if math.isfinite(eta) else '?'
  print(f'[{label}] {done_videos}/{total} videos  {rate:.1f} videos/s  ETA {eta_s}  '
        f'skipped {skipped}', flush=True)


def convert(builder, splits, *, workers=1, videos_per_shard=200, short_side=256,
            progress_every_s=10.0):
  """Writes `builder`'s dataset from splits = {tfds split: [Item]}; returns the report dict.

  `builder` is a video builder of this package constructed with class_names and
  data_dir; its data_path (`<data_dir>/<name>/<version>`) must not exist yet.
  """
  final = epath.Path(builder.data_path)
  work = final.with_name(final.name + '.incomplete')
  work.mkdir(parents=True, exist_ok=True)
  class_names = builder.info.features['label'].names
  plan = {'name': builder.name, 'version': str(builder.version), 'short_side': short_side,
          'videos_per_shard': videos_per_shard, 'class_names': class_names,
          'splits': {s: sorted((it.video_id, it.label, it.path) for it in items)
                     for s, items in splits.items()}}
  plan = json.loads(json.dumps(plan))  # tuples -> lists, as read back
  if (work / PLAN).exists():
    previous = json.loads((work / PLAN).read_text())
    if previous != plan:
      raise ValueError(f'{work} holds an interrupted conversion of other inputs (other '
                       'videos, classes or options); delete that folder to start over, or '
                       'rerun with the same arguments to resume it')
  else:
    _write_json(work / PLAN, plan)

  tasks = []
  for split, items in splits.items():
    shards = plan_shards(items, videos_per_shard)
    for i, shard in enumerate(shards):
      tasks.append({'split': split, 'dir': os.fspath(work), 'class_names': class_names,
                    'file': shard_name(builder.name, split, i, len(shards)),
                    'short_side': short_side,
                    'items': [(it.video_id, it.label, it.path) for it in shard]})
  results = {}
  for t in tasks:
    marker = work / (t['file'] + '.done.json')
    if marker.exists():
      results[t['file']] = json.loads(marker.read_text())
  todo = [t for t in tasks if t['file'] not in results]
  total = sum(len(t['items']) for t in tasks)
  resumed = total - sum(len(t['items']) for t in todo)
  if resumed:
    print(f'resuming {work}: {len(tasks) - len(todo)} of {len(tasks)} shards '
          f'({resumed} videos) already done', flush=True)
  print(f'converting {total} videos of {builder.name} into {len(tasks)} shards with '
        f'{workers} worker process(es)', flush=True)
  _run(todo, results, workers=workers, total=total, resumed=resumed,
       progress_every_s=progress_every_s, label=builder.name)
  return _finish(builder, splits, tasks, results, work, final)


def _run(todo, results, *, workers, total, resumed, progress_every_s, label):
  def skipped():
    return sum(len(r['missing']) + len(r['failed']) for r in results.values())

  t0 = time.time()
  if workers <= 1:  # in this process: no start-up cost (small datasets, tests)
    counter = multiprocessing.Value('q', resumed)
    _init_worker(counter)
    last = t0
    try:
      for t in todo:
        results[t['file']] = write_shard(t)
        if time.time() - last >= progress_every_s or t is todo[-1]:
          _progress(counter.value, total, resumed, t0, skipped(), label)
          last = time.time()
    finally:
      _init_worker(None)
    return
  ctx = multiprocessing.get_context('spawn')  # TF in the parent: never fork it
  counter = ctx.Value('q', resumed)
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_init_worker, initargs=(counter,))
  try:
    futures = {pool.submit(write_shard, t): t['file'] for t in todo}
    pending = set(futures)
    while pending:
      finished, pending = concurrent.futures.wait(
          pending, timeout=progress_every_s, return_when=concurrent.futures.FIRST_EXCEPTION)
      for f in finished:
        results[futures[f]] = f.result()  # a worker's crash (not a bad video) stops the run
      _progress(counter.value, total, resumed, t0, skipped(), label)
  except BaseException:
    pool.shutdown(wait=False, cancel_futures=True)
    raise
  pool.shutdown()


def _finish(builder, splits, tasks, results, work, final):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  cpu = sum(r.get('cpu_s', 0.0) for r in results.values())
  videos = sum(len(t['items']) for t in tasks)
  report = {'name': builder.name, 'version': str(builder.version),
            'num_classes': len(builder.info.features['label'].names),
            # decoding + resizing + JPEG + writing, per CPU-second of one worker
            'videos_per_worker_cpu_s': round(videos / cpu, 3) if cpu else None,
            'splits': {}}
  split_infos = []
  for split in splits:
    mine = [results[t['file']] for t in tasks if t['split'] == split]
    template = tfds.core.ShardedFileTemplate(
        data_dir=final, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
        dataset_name=builder.name, split=split, filetype_suffix='tfrecord')
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[r['count'] for r in mine],
        num_bytes=sum(r['num_bytes'] for r in mine), filename_template=template))
    report['splits'][split] = {
        'listed': len(splits[split]), 'written': sum(r['count'] for r in mine),
        'frames': sum(r['num_frames'] for r in mine),
        'missing': sorted(v for r in mine for v in r['missing']),
        'failed': sorted((v for r in mine for v in r['failed']), key=lambda v: v['video_id']),
        'partial': sorted((v for r in mine for v in r['partial']),
                          key=lambda v: v['video_id'])}
    if report['splits'][split]['written'] == 0:
      raise ValueError(f'no video of split {split!r} could be read (all {len(splits[split])} '
                       f'missing or undecodable); see the .done.json files in {work}')
  builder.info.set_file_format('tfrecord')
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(work)
  _write_json(work / REPORT, report)
  work.rename(final)  # the dataset appears complete or not at all
  for leftover in [*final.glob('*.done.json'), final / PLAN]:
    leftover.unlink()
  print_summary(report, final)
  return report


def print_summary(report, where, file=sys.stdout):
  for split, r in report['splits'].items():
    print(f'{report["name"]}:{split}: {r["written"]} of {r["listed"]} videos written '
          f'({r["frames"]} frames); {len(r["missing"])} missing, {len(r["failed"])} '
          f'undecodable, {len(r["partial"])} partial', file=file)
    for v in r['missing'][:5]:
      print(f'  missing: {v}', file=file)
    for v in r['failed'][:5]:
      print(f'  undecodable: {v["path"]}: {v["error"]}', file=file)
    for v in r['partial'][:5]:
      print(f'  partial: {v["path"]}: {v["frames_kept"]} frames kept; {v["error"]}', file=file)
  if report.get('videos_per_worker_cpu_s'):
    print(f'{report["videos_per_worker_cpu_s"]} videos per CPU-second of a worker', file=file)
  print(f'report: {epath.Path(where) / REPORT}', file=file)


def write_mp4(path, frames, fps, *, crf=12):
  """Writes uint8 frames (T, H, W, 3), H and W even, as an H.264 mp4 with PyAV."""
  import av  # pylint: disable=g-import-not-at-top

  frames = np.asarray(frames, np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(os.fspath(path), 'w') as out:
    stream = out.add_stream('libx264', rate=int(fps), options={'crf': str(crf)})
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = 'yuv420p'
    for frame in frames:
      out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    out.mux(stream.encode())
