"""Running experiments: run specs and their hashes, executors (local, process pool, Ray), the
results store, the runner behind `dlscope run`, the suite, results read back, and configs.

(Named `execution`, not `run`: `dlscope.run` is the public function, and a subpackage of that
name would replace it as an attribute of the package.)"""
