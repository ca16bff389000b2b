"""Random-weight pipeline builders for tests and benchmarks; the library never imports them at run time."""
