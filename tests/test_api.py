"""The public API: ``biobench`` exports what users and plug-ins need, every
name it lists imports, and importing it stays cheap."""
import importlib
import inspect
import pkgutil
import subprocess
import sys

import biobench
import models.rules
from models.rules.base import LearningRule


def built_in_rule_classes():
    """Every public LearningRule class defined in a module of models/rules/."""
    found = []
    for info in pkgutil.iter_modules(models.rules.__path__):
        module = importlib.import_module(f"models.rules.{info.name}")
        found += [value for name, value in vars(module).items()
                  if inspect.isclass(value) and issubclass(value, LearningRule)
                  and value.__module__ == module.__name__ and not name.startswith("_")]
    return found


def test_every_listed_name_imports():
    for name in biobench.__all__:
        namespace = {}
        exec(f"from biobench import {name}", namespace)
        assert namespace[name] is getattr(biobench, name)
    assert len(set(biobench.__all__)) == len(biobench.__all__)


def test_every_built_in_rule_class_is_exported():
    classes = built_in_rule_classes()
    assert len(classes) >= len(models.rules.RULES.registered(plugins=False))
    missing = [cls.__name__ for cls in classes if getattr(biobench, cls.__name__, None) is not cls]
    assert missing == []
    assert {cls.__name__ for cls in classes} <= set(biobench.__all__)


def test_the_layers_registries_convert_and_the_error_base_are_exported():
    from benchmark.errors import BiobenchError
    from models.convert import convert
    from models.lc import LocallyConnected2d
    assert biobench.BiobenchError is BiobenchError
    assert biobench.convert is convert
    assert biobench.LocallyConnected2d is LocallyConnected2d
    assert {"plain_state_dict", "FeedbackLayer", "Linear", "Conv2d", "RULES", "ARCHS", "DATASETS", "EXECUTORS",
            "Trainer"} <= set(biobench.__all__)


def test_importing_biobench_does_not_import_torch():
    code = "import sys, biobench; print(sorted(m for m in ('torch', 'pandas', 'models.rules.fa') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
