"""The experiment contract: what every experiment builds on, knowing none of them by name.

- `config`: `ExperimentConfig` (the base of every experiment's pydantic config), profiles,
  TOML files and `--set` overrides;
- `limits`: up-front size limits (a run's memory estimate before anything is allocated);
- `runspec`: `RunSpec` (one independent run, its data description and hash), `RunResult`,
  `RunContext`, and `execute` (run specs in this process).
"""
