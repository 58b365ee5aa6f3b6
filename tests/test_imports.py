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
    assert "dmporec.build_io" in names and "dmporec.raw_lines" in names  # split out of build, raw
    for name in names:
        importlib.import_module(name)


def test_help_and_config_loading_need_no_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dmporec.cli import main\n"
        "from dmporec.config import load_config\n"
        "load_config('configs/demo.yaml', ['sft.layout=naive'])\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "prepare" in out.stdout and "recommend" in out.stdout
