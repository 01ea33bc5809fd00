"""Build a small robomimic dataset with robomimic's own tools (run as a script by conftest.py).

1. Record a few short robosuite Lift episodes with random OSC_POSE actions, storing what robosuite's
   ``DataCollectionWrapper`` stores: flattened MuJoCo states and the model xml, in robomimic's raw
   layout (``data/demo_i/{states, actions}``, attrs ``model_file``, ``env_args``) -> ``raw.hdf5``.
2. ``robomimic.scripts.split_train_val.split_train_val_from_hdf5`` adds ``mask/train`` and ``mask/valid``.
3. ``robomimic.scripts.dataset_states_to_obs.dataset_states_to_obs`` replays the states in a fresh env
   and writes observations (low-dim + two 32x32 cameras), rewards, dones -> ``obs.hdf5``.

Usage: python robomimic_fixture.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

N_EPISODES = 3
N_STEPS = 8
CAMERAS = ["agentview", "robot0_eye_in_hand"]
IMAGE_SIZE = 32


def record_raw(path: Path) -> None:
    import h5py
    import numpy as np
    import robosuite
    from robosuite.controllers import load_controller_config

    env_kwargs = dict(
        robots=["Panda"], controller_configs=load_controller_config(default_controller="OSC_POSE"),
        control_freq=20, reward_shaping=False, has_renderer=False, has_offscreen_renderer=False,
        use_camera_obs=False, ignore_done=True, hard_reset=False,
    )
    env_meta = dict(type=1, env_name="Lift", env_version=robosuite.__version__, env_kwargs=env_kwargs)
    env = robosuite.make("Lift", **env_kwargs)
    rng = np.random.default_rng(0)
    try:
        with h5py.File(path, "w") as f:
            data = f.create_group("data")
            for i in range(N_EPISODES):
                env.reset()
                xml = env.sim.model.get_xml()
                states, actions = [], []
                for _ in range(N_STEPS):
                    states.append(np.array(env.sim.get_state().flatten()))
                    action = rng.uniform(-0.5, 0.5, size=7)
                    actions.append(action)
                    env.step(action)
                demo = data.create_group(f"demo_{i}")
                demo.create_dataset("states", data=np.array(states))
                demo.create_dataset("actions", data=np.array(actions))
                demo.attrs["model_file"] = xml
                demo.attrs["num_samples"] = N_STEPS
            data.attrs["total"] = N_EPISODES * N_STEPS
            data.attrs["env_args"] = json.dumps(env_meta)
    finally:
        env.close()


def main(out_dir: Path) -> None:
    from lfm_policy.envs.robomimic_compat import import_robomimic_env_utils

    import_robomimic_env_utils()
    import numpy as np
    from robomimic.scripts.dataset_states_to_obs import dataset_states_to_obs
    from robomimic.scripts.split_train_val import split_train_val_from_hdf5

    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "raw.hdf5"
    record_raw(raw)
    np.random.seed(0)  # split_train_val shuffles with the global RNG
    split_train_val_from_hdf5(hdf5_path=str(raw), val_ratio=0.34)
    args = argparse.Namespace(
        dataset=str(raw), output_name="obs.hdf5", n=None, shaped=False, camera_names=CAMERAS,
        camera_height=IMAGE_SIZE, camera_width=IMAGE_SIZE, done_mode=2, copy_rewards=False, copy_dones=False,
        exclude_next_obs=False, compress=True,
    )
    dataset_states_to_obs(args)
    (out_dir / "DONE").write_text("ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
