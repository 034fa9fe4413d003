"""Where and how the programs run: device meshes and sharding rules (`sharding`), several
processes and hosts (`distributed`), XLA:CPU kernel libraries (`xla_cpu`) and the CPU
allocator (`cpu_allocator`). Above the ground floor (cli, names, paths), below the models."""
