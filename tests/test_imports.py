import importlib
import pkgutil

import dmporec


def test_every_module_imports():
    names = [
        m.name
        for m in pkgutil.walk_packages(dmporec.__path__, "dmporec.")
        if m.name != "dmporec.__main__"
    ]
    assert "dmporec.losses" in names and "dmporec.stages.pipeline" in names
    for name in names:
        importlib.import_module(name)
