"""Measurement: `hcollectives demo` and `bench`, the per-iteration breakdown, plain
mrjob comparisons, the collective and Open MPI benches, and input generation."""
