"""The package must parse as Python 3.8 (the legacy image's interpreter), including code only AIMET paths reach."""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app", "hrnet_quanteval")
SOURCES = sorted(f for f in os.listdir(PACKAGE) if f.endswith(".py"))


@pytest.mark.parametrize("name", SOURCES)
def test_module_parses_as_python_38(name):
    with open(os.path.join(PACKAGE, name)) as f:
        source = f.read()
    tree = ast.parse(source, filename=name, feature_version=(3, 8))
    # annotations must stay strings on 3.8 (PEP 604 unions and builtin generics only work there lazily)
    assert "from __future__ import annotations" in source or name in ("__init__.py", "__main__.py")
    for node in ast.walk(tree):
        assert not isinstance(node, getattr(ast, "Match", ())), f"{name}: match statements need Python 3.10"
