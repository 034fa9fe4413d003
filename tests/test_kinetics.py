"""Kinetics builders and the conversion command, on a tiny generated Kinetics folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from stvit_jax.data.builders import kinetics
from stvit_jax.data.builders import video_convert
import video_fixtures


@pytest.fixture(scope='module')
def manual(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('k400'))
  return root, video_fixtures.make_kinetics_dir(root)


@pytest.fixture(scope='module')
def converted(manual, tmp_path_factory):
  root, listing = manual
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  kinetics.prepare(kinetics.Kinetics400, root, data_dir=data_dir, workers=1,
                   videos_per_shard=3)
  return data_dir, listing


def test_csv_quoted_label_with_comma(manual):
  root, _ = manual
  rows = kinetics.read_csv(os.path.join(root, 'annotations', 'train.csv'))
  assert ('playing drums, fast', 'train-001_000001_000011') in rows


def test_converted_dataset_reads_as_ordinary_tfds(converted):
  data_dir, listing = converted
  builder = tfds.builder('kinetics400', data_dir=data_dir)
  assert builder.is_prepared()
  assert builder.info.features['label'].names == video_fixtures.LABELS  # sorted names
  for split, items in listing.items():
    ok = {vid: (label, n) for vid, label, n, fate in items if fate in ('ok', 'replaced')}
    got = {}
    for ex in builder.as_dataset(split=split).as_numpy_iterator():
      video = ex['video']
      assert video.dtype == np.uint8 and video.shape[1:] == (256, 341, 3)  # short side 256
      assert ex['num_frames'] == video.shape[0] and ex['fps'] == pytest.approx(8.0)
      # the frame index survives H.264 + resize + JPEG in the first block
      assert np.abs(video[:, 40, 40, 0].astype(int) - (18 * np.arange(len(video)) + 10)).max() < 8
      got[ex['video_id'].decode()] = (builder.info.features['label'].int2str(ex['label']),
                                      int(ex['num_frames']))
    assert got == ok, split


def test_report_lists_every_skipped_file(converted):
  data_dir, listing = converted
  report = json.loads((tfds.builder('kinetics400', data_dir=data_dir).data_path /
                       video_convert.REPORT).read_text())
  train, val = report['splits']['train'], report['splits']['validation']
  fates = {s: {vid: fate for vid, _, _, fate in items} for s, items in listing.items()}
  assert train['missing'] == [v for v, f in fates['train'].items() if f == 'missing']
  assert [v['video_id'] for v in train['failed']] == [
      v for v, f in fates['train'].items() if f == 'zero-length']
  assert 'zero-length' in train['failed'][0]['error']
  assert [v['video_id'] for v in val['failed']] == [
      v for v, f in fates['validation'].items() if f == 'corrupt']
  assert (train['listed'], train['written']) == (9, 7)
  assert (val['listed'], val['written']) == (6, 5)


def test_frames_stay_encoded_until_sampled(converted):
  data_dir, _ = converted
  builder = tfds.builder('kinetics400', data_dir=data_dir)
  ds = builder.as_dataset(split='train', decoders={'video': tfds.decode.SkipDecoding()})
  ex = next(iter(ds))
  assert ex['video'].dtype.name == 'string' and ex['video'].shape.rank == 1
  assert bytes(ex['video'][0].numpy()[:2]) == b'\xff\xd8'  # a JPEG per frame


def test_interrupted_conversion_resumes_without_redoing_shards(manual, tmp_path, monkeypatch):
  root, _ = manual
  data_dir = str(tmp_path)
  real, calls = video_convert.write_shard, []

  def interrupted(task):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(task['file'])
    return real(task)

  monkeypatch.setattr(video_convert, 'write_shard', interrupted)
  with pytest.raises(KeyboardInterrupt):
    kinetics.prepare(kinetics.Kinetics400, root, data_dir=data_dir, videos_per_shard=2)
  builder = kinetics.Kinetics400(data_dir=data_dir)
  assert not builder.is_prepared()  # nothing half-written looks finished
  first = list(calls)
  monkeypatch.setattr(video_convert, 'write_shard', lambda task: calls.append(task['file'])
                      or real(task))
  kinetics.prepare(kinetics.Kinetics400, root, data_dir=data_dir, videos_per_shard=2)
  again = calls[len(first):]
  assert len(first) == 2 and not set(first) & set(again)  # finished shards not redone
  assert len(first) + len(again) == 5 + 3  # ceil(9 / 2) train + ceil(6 / 2) val shards
  builder = tfds.builder('kinetics400', data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == 7
  assert not list(builder.data_path.glob('*.done.json'))


def test_resume_with_other_inputs_is_refused(manual, tmp_path, monkeypatch):
  root, _ = manual
  monkeypatch.setattr(video_convert, 'write_shard', lambda task: (_ for _ in ()).throw(
      KeyboardInterrupt))
  with pytest.raises(KeyboardInterrupt):
    kinetics.prepare(kinetics.Kinetics400, root, data_dir=str(tmp_path), videos_per_shard=2)
  with pytest.raises(ValueError, match='interrupted conversion of other inputs'):
    kinetics.prepare(kinetics.Kinetics400, root, data_dir=str(tmp_path), videos_per_shard=3)


def _cli(argv, capsys):
  code = kinetics.main(argv)
  return code, capsys.readouterr().err


def test_cli_bad_manual_dirs(tmp_path, capsys):
  code, err = _cli(['--name', 'kinetics400', '--manual_dir', str(tmp_path),
                    '--data_dir', str(tmp_path / 'out')], capsys)
  assert code == 2 and 'annotations/train.csv' in err and 'per-class' in err
  os.makedirs(tmp_path / 'annotations')
  (tmp_path / 'annotations' / 'train.csv').write_text('label,youtube_id,start\nx,y,1\n')
  code, err = _cli(['--name', 'kinetics400', '--manual_dir', str(tmp_path)], capsys)
  assert code == 2 and "columns ['label', 'youtube_id', 'start']" in err
  (tmp_path / 'annotations' / 'train.csv').write_text(
      'label,youtube_id,time_start,time_end,split\nzumba,abc,1,11,train\n')
  code, err = _cli(['--name', 'kinetics400', '--manual_dir', str(tmp_path),
                    '--data_dir', str(tmp_path / 'out')], capsys)
  assert code == 2 and 'no video files' in err and 'train' in err
  assert not (tmp_path / 'out').exists()  # nothing written before the inputs check out


def test_all_videos_undecodable_is_an_error_not_a_dataset(tmp_path, capsys):
  root = tmp_path / 'm'
  os.makedirs(root / 'annotations')
  os.makedirs(root / 'train')
  (root / 'train' / 'abc_000001_000011.mp4').write_bytes(b'')
  (root / 'annotations' / 'train.csv').write_text(
      'label,youtube_id,time_start,time_end,split\nzumba,abc,1,11,train\n')
  code, err = _cli(['--name', 'kinetics700', '--manual_dir', str(root), '--data_dir',
                    str(tmp_path / 'out'), '--workers', '1'], capsys)
  assert code == 2 and 'no video of split' in err
  assert not kinetics.Kinetics700(data_dir=str(tmp_path / 'out')).is_prepared()


@pytest.mark.slow
def test_cli_parallel_workers(manual, tmp_path):
  root, _ = manual
  out = subprocess.run(
      [sys.executable, '-m', 'stvit_jax.data.builders.kinetics', '--name', 'kinetics600', '--manual_dir',
       root, '--data_dir', str(tmp_path), '--workers', '2', '--videos_per_shard', '2',
       '--progress_every_s', '1'], capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr
  assert 'videos/s' in out.stdout and 'ETA' in out.stdout
  assert 'with 2 worker process(es)' in out.stdout
  assert 'kinetics600:train: 7 of 9 videos written' in out.stdout
  builder = kinetics.Kinetics600(data_dir=str(tmp_path))
  assert builder.info.splits['validation'].num_examples == 5
  again = subprocess.run(
      [sys.executable, '-m', 'stvit_jax.data.builders.kinetics', '--name', 'kinetics600', '--manual_dir',
       root, '--data_dir', str(tmp_path)], capture_output=True, text=True, timeout=300,
      check=False)
  assert again.returncode == 0 and 'already prepared' in again.stdout
