"""The symbolic engine: IR formulas → sympy → derivatives → printed PyTorch / Triton code.

This is the only package of miras that imports sympy; its public return values are plain
frozen dataclasses holding printed code strings and flags (sympy objects appear only in the
internal helpers of the submodules).

=====================  ======================================================================
module                 what it does
=====================  ======================================================================
``convert``            IR ``Expr`` → sympy (function whitelist, smoothing, reductions)
``functions``          the function table; ``sigmoid``/``softplus``/``logcosh``; ``Smoothing``
``reductions``         sum symbols Σⱼ over the head dimension, gradients, Jacobians, VJPs
``bias``               built-in biases as formulas; :func:`derive_bias`
``retention``          retention closed forms; mirror-map inverses solved by sympy
``algorithm``          GD / momentum / Muon / implicit GD / non-parametric / Omega window
``features``           feature maps and activations with derivatives
``printing``           sympy → PyTorch and sympy → Triton (whitelists; blocks of statements)
``pretty``             unicode / LaTeX math for :func:`explain`
``derive``             :func:`derive` (the whole model) and :func:`explain`
=====================  ======================================================================

>>> import miras
>>> from miras.symbolic import derive, explain
>>> m = miras.load("examples/titans.miras")
>>> d = derive(m)
>>> d.bias.grad.torch.source(), d.algorithm.kind, d.algorithm.states
('grad = -v + y\\n', 'momentum', ('S',))
>>> "S_t = β_t·S_{t−1} − η_t·g_t" in explain(m)
True
"""

from miras.symbolic.algorithm import (
    AlgorithmRule,
    GDRule,
    Hyper,
    ImplicitGDRule,
    MomentumRule,
    MuonRule,
    NewtonSchulz,
    NonparametricRule,
    WindowRule,
    derive_algorithm,
    derive_window,
)
from miras.symbolic.bias import BiasDerivation, JacobianCode, builtin_formula, derive_bias
from miras.symbolic.derive import Derivation, derive, explain
from miras.symbolic.errors import (
    ConversionError,
    NoClosedForm,
    SymbolicError,
    UnprintableError,
    UnsupportedForm,
)
from miras.symbolic.features import (
    ActivationRule,
    FeatureRule,
    derive_activation,
    derive_feature,
)
from miras.symbolic.params import Input
from miras.symbolic.printing import TORCH_CALLS, TRITON_CALLS, Block, Code, Statement
from miras.symbolic.retention import RetentionRule, SimplexSolve, derive_retention

__all__ = [
    "TORCH_CALLS",
    "TRITON_CALLS",
    "ActivationRule",
    "AlgorithmRule",
    "BiasDerivation",
    "Block",
    "Code",
    "ConversionError",
    "Derivation",
    "FeatureRule",
    "GDRule",
    "Hyper",
    "ImplicitGDRule",
    "Input",
    "JacobianCode",
    "MomentumRule",
    "MuonRule",
    "NewtonSchulz",
    "NoClosedForm",
    "NonparametricRule",
    "RetentionRule",
    "SimplexSolve",
    "Statement",
    "SymbolicError",
    "UnprintableError",
    "UnsupportedForm",
    "WindowRule",
    "builtin_formula",
    "derive",
    "derive_activation",
    "derive_algorithm",
    "derive_bias",
    "derive_feature",
    "derive_retention",
    "derive_window",
    "explain",
]
