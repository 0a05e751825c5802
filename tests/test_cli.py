"""Every flag a script accepts can be found by searching that script: a flag a helper makes (cli.add_device_flags,
cli.add_config_flags) is named where the helper is called."""

import importlib.util
import os
import re

import pytest

from conftest import ROOT

SCRIPTS = ["prompt.py", "rag.py", "train_lora.py", "train_pretrain.py", "serve.py", "nanolevels/__main__.py",
           "data/world/prepare.py", "bench/seeds.py"]


@pytest.mark.parametrize("path", SCRIPTS)
def test_every_flag_is_named_in_its_script(path, run_main):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], os.path.join(ROOT, path))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code, help_text, _ = run_main(script.main, "--help")
    flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", help_text)) - {"--help"}  # argparse's own
    source = open(os.path.join(ROOT, path), encoding="utf-8").read()
    unnamed = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![\w-])", source))
    assert code == 0 and len(flags) > 2 and unnamed == [], unnamed
