"""runconfig: which config changes break exact resume."""
from stvit_jax.train import runconfig


def saved_config(**model):
  return {'batch_size': 8, 'model': {'name': 'deit_small', 'remat_policy': 'none', **model}}


def test_a_field_added_after_the_checkpoint_is_no_change_at_the_value_older_code_ran():
  old = saved_config()  # written before model.scan_layers / model.attention existed
  assert runconfig.changes(old, saved_config(scan_layers=False, attention='explicit')) == []
  found = runconfig.changes(old, saved_config(scan_layers=True, attention='explicit'))
  assert found == [('model.scan_layers', False, True)]


def test_changed_and_harmless_fields():
  old = {**saved_config(), 'log_every_steps': 1}
  new = {**saved_config(), 'log_every_steps': 5, 'batch_size': 16}
  assert runconfig.changes(old, new) == [('batch_size', 8, 16)]


def with_mesh(**mesh):
  return {**saved_config(), 'mesh': {'data': -1, 'fsdp': 1, **mesh}}


def test_batch_norm_grouping_changes_are_refused_other_mesh_changes_are_not():
  one = with_mesh(dcn_data=1, batch_norm='slice')
  # per-slice statistics over 2 slices instead of 1: BatchNorm statistics change
  assert runconfig.changes(one, with_mesh(dcn_data=2, batch_norm='slice')) == [
      ('mesh.dcn_data', 1, 2)]
  two = with_mesh(dcn_data=2, batch_norm='slice')
  assert runconfig.changes(two, with_mesh(dcn_data=2, batch_norm='global')) == [
      ('mesh.batch_norm', 'slice', 'global')]
  # whole-batch statistics stay whole-batch on any number of slices; one slice is 'global'
  assert runconfig.changes(with_mesh(dcn_data=1, batch_norm='global'),
                           with_mesh(dcn_data=4, batch_norm='global')) == []
  assert runconfig.changes(one, with_mesh(dcn_data=1, batch_norm='global')) == []
  assert runconfig.changes(one, with_mesh(dcn_data=1, data=2, fsdp=4)) == []  # layout only
  # a checkpoint from before multi-slice ran as dcn_data=1, 'slice'
  assert runconfig.changes(with_mesh(), one) == []
  assert runconfig.changes(with_mesh(), two) == [('mesh.dcn_data', 1, 2)]
  _, refusal = runconfig.check_resume(one, two, 'at step 3')
  assert 'mesh.dcn_data 1 -> 2' in refusal and 'resume_allow_changes=mesh.dcn_data' in refusal
  assert runconfig.check_resume(one, {**two, 'resume_allow_changes': 'mesh.dcn_data'},
                              'at step 3')[1] is None
