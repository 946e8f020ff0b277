"""The top-level API the README documents, and every docstring example in the package."""

import doctest
import importlib
import pkgutil

import pytest

import optlab

DOCUMENTED = [
    "muon",
    "scale_by_muon",
    "orthogonalize_muon",
    "muon_labels",
    "MuonDimensionNumbers",
    "shampoo",
    "scale_by_shampoo",
    "ShampooState",
    "soap",
    "scale_by_soap",
    "SoapState",
    "BlockMomentumState",
    "sam",
    "sam_perturb",
    "sam_perturbation",
    "SAMPerturbState",
    "kfac",
    "scale_by_kfac",
    "kfac_value_and_grad",
    "kfac_layers",
    "KFACFactors",
    "KFACLayer",
    "KFACState",
    "analysis",
    "lab",
    "linalg",
]


@pytest.mark.parametrize("name", DOCUMENTED)
def test_readme_names_are_exported(name):
    assert name in optlab.__all__
    assert getattr(optlab, name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "muon",
        "scale_by_muon",
        "orthogonalize_muon",
        "shampoo",
        "scale_by_shampoo",
        "soap",
        "scale_by_soap",
        "sam",
        "sam_perturb",
        "kfac",
        "scale_by_kfac",
        "kfac_value_and_grad",
    ],
)
def test_factories_are_functions_not_modules(name):
    assert callable(getattr(optlab, name))


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(optlab.__path__, "optlab."):
        module = importlib.import_module(info.name)
        finder = doctest.DocTestFinder()
        if any(test.examples for test in finder.find(module)):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _modules_with_examples())
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
