import imageio.v2 as imageio
import numpy as np
from test_eval_wrapper import CounterEnv

from lfm_policy.eval.video import caption_frame, caption_layout, frame_caption, write_video
from lfm_policy.eval.wrappers import MultiStepWrapper


def test_caption_is_a_band_above_the_untouched_picture():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
    out = caption_frame(frame, "step 3/40  SUCCESS")
    scale = 4  # 84 px → 336 px ≥ 256
    font, band = caption_layout(84 * scale)
    picture = np.repeat(np.repeat(frame, scale, 0), scale, 1)
    np.testing.assert_array_equal(out[band : band + 336, :336], picture)  # every picture pixel as it was
    assert out.shape[0] % 16 == 0 and out.shape[1] % 16 == 0 and out.shape[0] >= band + 336
    assert out[:band].max() == 255  # white text in the band
    assert not out[band + 336 :].any() and not out[:, 336:].any()  # padding stays black
    # the font grows with the frame: a 512-px frame gets a larger font and a taller band
    assert caption_layout(512)[0] > font and caption_layout(512)[1] > band
    text_rows = lambda img, b: np.flatnonzero(img[:b].max(axis=(1, 2)) > 128)  # noqa: E731
    big = caption_frame(np.zeros((512, 512, 3), np.uint8), "step 3/40  SUCCESS")
    assert np.ptp(text_rows(big, caption_layout(512)[1])) > np.ptp(text_rows(out, band))


def test_success_is_shown_from_the_step_it_happens(tmp_path):
    class ImageCounter(CounterEnv):
        def __init__(self):
            super().__init__(success_at=3)
            from gymnasium import spaces

            self.observation_space = spaces.Dict({**self.observation_space.spaces,
                                                  "cam_image": spaces.Box(0, 255, (8, 8, 3), np.uint8)})

        def _img(self, obs):
            return {**obs, "cam_image": np.full((8, 8, 3), 20 * self.t, np.uint8)}

        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed, options=options)
            return self._img(obs), info

        def step(self, action):
            obs, *rest = super().step(action)
            return (self._img(obs), *rest)

    env = MultiStepWrapper(ImageCounter(), n_obs_steps=1, n_action_steps=2)
    env.reset(seed=0, options={"record_below_seed": 1})
    env.step(np.ones((2, 1)))
    env.step(np.ones((2, 1)))
    frames = env.pop_frames()
    assert [flag for _, flag in frames] == [False, False, False, True]  # reset, steps 1, 2, 3 (success)
    assert [int(f[0, 0, 0]) for f, _ in frames] == [0, 20, 40, 60]
    captions = [frame_caption(k, 3, flag, True) for k, (_, flag) in enumerate(frames)]
    assert captions == ["step 0/3", "step 1/3", "step 2/3", "step 3/3  SUCCESS"]
    assert frame_caption(5, 5, False, False) == "step 5/5  failure" and frame_caption(4, 5, False, False) == "step 4/5"
    # the written video's bands differ exactly where the caption changes
    path = write_video(tmp_path / "v.mp4", frames, success=True)
    video = imageio.mimread(path)
    band = caption_layout(video[0].shape[1] // 16 * 16)[1] - 2
    band_diff = [np.abs(video[k][:band].astype(int) - video[k - 1][:band].astype(int)).sum() for k in (1, 2, 3)]
    assert band_diff[2] > band_diff[1] > 0 and not list(tmp_path.glob("*.tmp.mp4"))


def test_unrecorded_episodes_never_render():
    class Counting(CounterEnv):
        renders = 0

        def render(self):
            Counting.renders += 1
            return np.zeros((4, 4, 3), np.uint8)

    env = MultiStepWrapper(Counting(), n_obs_steps=1, n_action_steps=2)
    env.reset(seed=5, options={"record_below_seed": 5})
    env.step(np.ones((2, 1)))
    assert Counting.renders == 0
    env.reset(seed=4, options={"record_below_seed": 5})
    env.step(np.ones((2, 1)))
    assert Counting.renders == 3
