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
