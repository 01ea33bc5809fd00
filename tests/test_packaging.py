import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("zarr", "h5py", "gymnasium", "mujoco", "robosuite", "robomimic", "metaworld", "torchvision",
         "diffusers", "matplotlib", "scipy", "imageio", "onnx", "onnxruntime", "onnxscript", "websockets", "msgpack")


def run_py(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_lfm_policy_loads_no_heavy_dependency(tmp_path):
    loaded = run_py("import sys, lfm_policy, lfm_policy.flow, lfm_policy.nets, lfm_policy.cli as c, "
                    "lfm_policy.runtime, "
                    "lfm_policy.runtime.export, lfm_policy.runtime.loop; c.build_parser(); "
                    "print(sorted({m.split('.')[0] for m in sys.modules}))", tmp_path)
    assert not [m for m in HEAVY if f"'{m}'" in loaded], loaded


def test_side_folders_install_under_lfm_policy_and_shadow_nothing(tmp_path):
    where = run_py("import lfm_policy.datasets as d, lfm_policy.envs as e, lfm_policy.eval as v; "
                   "print(d.__file__, e.__file__, v.__file__)", tmp_path).split()
    assert [Path(p).parent.name for p in where] == ["datasets", "envs", "eval"]
    code = ("import importlib.util as u; s = u.find_spec('datasets'); print(s.origin if s else 'none'); "
            "import builtins; print(callable(builtins.eval))")
    origin, builtin_eval = run_py(code, tmp_path).splitlines()
    assert origin == "none" or not origin.startswith(str(ROOT)), origin
    assert builtin_eval == "True"


def test_pyproject_lists_every_package_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([pkg, *rel.parts]) if rel.parts else pkg)
    # sub-packages of lfm_policy that live inside it (flow, nets, ...) but not the mapped side folders
    assert found <= listed, sorted(found - listed)


def test_cli_version_and_help():
    exe = Path(sys.executable).with_name("lfm-policy")
    env = dict(os.environ)
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env=env, check=True)
    import lfm_policy

    assert out.stdout.strip() == f"lfm-policy {lfm_policy.__version__}"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, check=True)
    assert "usage: lfm-policy" in out.stdout
