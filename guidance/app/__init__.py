"""The application on top of the library: the `guidance` command line, run configs, generate, sweep, evaluate,
bench and reports. The library (guidance, guidance.pipelines) never imports this package."""
