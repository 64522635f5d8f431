"""The driver: the only code that knows both the experiments and the report.

- `runner.run_experiment`: one experiment end to end (the code path behind `dlscope run`,
  `dlscope.run()` and `dlscope run all`);
- `suite.run_all`: every experiment, then the report;
- `result`: `ExperimentResult` and `load` (a finished results folder read back);
- `configdoc`: what an experiment's config accepts, for `dlscope show` and docs/CONFIG.md.
"""
