"""`pip install nabi` with no extras: train, eval, predict, summary and demo work; the rest names its extra.

Each test runs nabi in a fresh interpreter in which only the standard library and
nabi's core dependencies (pyproject.toml's ``dependencies``) can be imported: an
import hook refuses every other top-level module, as if it were not installed.
"""
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# pyproject's core requirement names -> the modules they install (plus what those import themselves)
CORE_MODULES = {"numpy", "PIL", "tqdm", "safetensors", "numba", "llvmlite", "threadpoolctl", "tomli", "nabi"}
_REQUIREMENT_MODULES = {"numpy": "numpy", "pillow": "PIL", "tqdm": "tqdm", "safetensors": "safetensors",
                        "numba": "numba", "threadpoolctl": "threadpoolctl", "tomli": "tomli"}

_BOOT = textwrap.dedent("""
    import sys
    ALLOWED = set(sys.argv[1].split(","))
    STDLIB = set(sys.stdlib_module_names)

    class CoreOnly:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ALLOWED or top in STDLIB or top.startswith("_"):
                return None
            raise ModuleNotFoundError(f"No module named {top!r} (hidden: not a core dependency)", name=top)

    sys.meta_path.insert(0, CoreOnly())
    import json
    from nabi.cli.main import main
    codes = []
    for argv in json.loads(sys.argv[2]):
        codes.append(main(argv))
        print("EXIT", codes[-1], flush=True)
""")


def _core_run(argvs, tmp_path, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", _BOOT, ",".join(sorted(CORE_MODULES)), json.dumps(argvs)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)
    codes = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("EXIT ")]
    return proc, codes


def test_the_core_dependencies_are_the_ones_pyproject_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for r in project["dependencies"]}
    assert names == set(_REQUIREMENT_MODULES)
    assert {_REQUIREMENT_MODULES[n] for n in names} <= CORE_MODULES
    extras = project["optional-dependencies"]
    for extra in ("plots", "experiments", "digits", "onnx", "gpu", "all", "test"):
        assert extra in extras


def _tiny_folder(root):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat_a", "cat_b"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            img = rng.integers(0, 80, (16, 16, 3)) + 150 * c     # class b is brighter: learnable
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_core_install_runs_train_eval_predict_summary_and_demo(tmp_path):
    data = _tiny_folder(tmp_path / "photos")
    argvs = [
        ["train", str(data), "--model", "cifar_cnn", "--epochs", "1", "--batch-size", "8",
         "--val-ratio", "0.25", "--test-ratio", "0", "--out", "run"],
        ["eval", "run", str(data)],
        ["predict", "run", str(data / "cat_a" / "0.png")],
        ["summary", "lenet5"],
        ["demo", "--epochs", "1", "--out", "demo"],
    ]
    proc, codes = _core_run(argvs, tmp_path)
    assert codes == [0, 0, 0, 0, 0], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "eval" / "eval.json").is_file()
    assert not (tmp_path / "run" / "eval" / "confusion_matrix.png").exists()     # matplotlib is hidden
    assert 'confusion_matrix.png not drawn: matplotlib is not installed; run: pip install "nabi[plots]"' \
        in proc.stderr
    assert "cat_a" in proc.stdout and "test accuracy" in proc.stdout


@pytest.mark.parametrize("argv, extra", [
    (["export", "lenet5", "--onnx", "m.onnx"], "onnx"),
    (["train", "embedded:digits8x8", "--epochs", "1", "--out", "r"], "digits"),
])
def test_a_command_that_needs_an_extra_names_the_pip_line(tmp_path, argv, extra):
    proc, codes = _core_run([argv], tmp_path)
    assert codes == [1], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f'pip install "nabi[{extra}]"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_install_hint_knows_each_extra():
    from nabi.extras import install_hint, missing_module_message
    assert install_hint("onnxruntime.capi") == 'pip install "nabi[onnx]"'
    assert install_hint("scipy") == 'pip install "nabi[experiments]"'
    assert install_hint("matplotlib.pyplot") == 'pip install "nabi[plots]"'
    assert install_hint("cupy") == 'pip install "nabi[gpu]"'
    assert install_hint("ray.util") == 'pip install "nabi[ray]"'
    assert install_hint("fastapi") == 'pip install "nabi[serve]"'
    assert install_hint("tqdm") == "pip install --force-reinstall nabi"
    assert install_hint("nonexistent_thing") is None
    assert missing_module_message(ModuleNotFoundError("x", name="sklearn.datasets")) == \
        'sklearn is not installed; run: pip install "nabi[digits]"'
