"""Commands beside training: `python -m stvit_jax.tools.<name>`.

aot (compile the train step for a TPU slice), benchmark (+ benchmark_table, op_profile,
input_benchmark, input_profile), flops, predict, visualize, convert (PyTorch -> weights
directory) and pretrained (the weights catalogue and cache). The top layer: nothing in
the library imports a tool.
"""
