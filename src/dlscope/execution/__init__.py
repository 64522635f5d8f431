"""Where runs execute and where their results are kept: the executors (in process, a
process pool, Ray) and the results store. Below the experiments (it knows none of them:
a RunSpec names its module) and above the contract (dlscope.contract).

(Named `execution`, not `run`: `dlscope.run` is the public function, and a subpackage of that
name would replace it as an attribute of the package.)"""
