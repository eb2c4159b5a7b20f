"""Code that only the tests and the benchmarks use: simulated inputs and quality measures."""
