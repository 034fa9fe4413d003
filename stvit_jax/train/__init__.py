"""Training and evaluation runs: a config becomes a trained, checkpointed model.

`functional` (a model as pure functions: split, apply, rngs), `trainer` (state, its
shardings, the jitted train and eval steps: `build`), `loop` (`train_and_evaluate`),
`init_from` (weights for warm start and eval-only), `checkpoint` (orbax run
checkpoints, resume, corruption), `runconfig` (what may change on resume), `optim`,
`health` (non-finite steps), `metric_writer`, `evaluate`, `eval_only`
(config.mode='eval') and `defaults` (the config fields every configs/*.py builds on).
"""
