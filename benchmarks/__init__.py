"""Side-by-side benchmarks: cedana against raw CRIU and the runtimes' own checkpointing."""
