"""Model specs (MLP, CNN, user factories), exact parameter counts, sizes for a budget.

A spec is plain data (a pydantic model) that can be written to a config file, hashed into
a run id and parsed from a short name (`parse_model`):

    mlp:784-128-64-10        input 784, hidden 128 and 64, output 10 (ReLU)
    mlp:1-8x8-1:tanh         eight hidden layers of width 8, tanh
    cnn:16,32/k3p1/fc128     conv 1->16->32 (kernel 3, padding 1, 2x2 max-pool after each), fc 128
        .../pool1 (no pool)  .../drop0.5  .../in3x32 (3 channels, 32 px)  .../out100 (classes)
        ...:tanh             the activation (ReLU when absent)
    cnn-b                    a preset (see PRESETS): the reports' models
    py:mypkg.nets:small_cnn,width=32
                             a user factory: mypkg.nets.small_cnn(width=32) returns the module

Factories (dlscope.models.factory): also written as a TOML table `[model] factory =
"py:mypkg.nets:small_cnn"; width = 32`. The spec records the target, its kwargs and the
SHA-256 of the module's source file at parse time; build refuses to run a changed file. The
module is looked up on sys.path, then in DLSCOPE_FACTORY_PATH's folders and the working
directory. build passes input_shape= and n_classes= to factories whose signature names them;
`sized` / `sizes_for` set a factory's size argument for a parameter budget or a sweep.

Data shapes (`adapt`): built-in specs take their input and output sizes from the data, but
only to replace MNIST's sizes (784 inputs / 1x28x28, 10 classes, as in the names above and
the presets) or sizes already equal to the data's; any other mismatch is a UserError, never
silently fixed. `deterministic_problem` names BatchNorm, Dropout and the like in a network
that must be a deterministic function of its parameters.
"""

from dlscope.models.adapt import adapt, deterministic_problem
from dlscope.models.api import build, count_params, describe, parse_model
from dlscope.models.factory import FACTORY_PATH_ENV, FactorySpec, factory_path
from dlscope.models.sizing import (
    cnn_for_params,
    mlp_params,
    module_params,
    sized,
    sizes_for,
    width_for_params,
)
from dlscope.models.specs import ACTIVATIONS, PRESETS, Activation, CNNSpec, MLPSpec

__all__ = ["ACTIVATIONS", "FACTORY_PATH_ENV", "PRESETS", "Activation", "CNNSpec", "FactorySpec",
           "MLPSpec", "adapt", "build", "cnn_for_params", "count_params", "describe",
           "deterministic_problem", "factory_path", "mlp_params", "module_params",
           "parse_model", "sized", "sizes_for", "width_for_params"]
