"""Text-to-video end to end on small random components: frames, record, MP4 that reads back."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from stepvar.errors import ConfigError, StepvarError
from stepvar.video_pipeline import load_video_pipeline, write_mp4
from stepvar.video_sampling import StarSampling


@pytest.mark.slow
def test_generate_17_frames_and_mp4_round_trip(small_pipe, tmp_path):
    res = small_pipe.generate("a red car", 17, StarSampling(seed=1))
    assert res.frames.shape == (17, 256, 256, 3) and res.frames.dtype == np.uint8
    assert np.array_equal(res.frames[0], res.frames[1])
    rec = res.record
    assert rec["model_status"].startswith("untrained") and rec["frames"] == 17 and rec["seconds"] == 1
    assert rec["block_passes"] == 23 and rec["token_positions"] == 3_520
    assert rec["token_passes"] == 3_520 * 2 and rec["method"] == {"method": "dense"}  # tokens x blocks, one row
    assert set(rec["timings"]) == {"text", "sample", "decode"}
    out = write_mp4(tmp_path / "clip.mp4", res.frames)
    back = iio.imread(out)
    assert back.shape == (17, 256, 256, 3)
    assert abs(float(back.mean()) - float(res.frames.mean())) < 5  # lossy H.264 of the same frames
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_write_mp4_reads_back(tmp_path):
    frames = np.repeat(np.linspace(0, 255, 17, dtype=np.uint8)[:, None, None, None], 64, axis=1)
    frames = np.broadcast_to(frames, (17, 64, 96, 3)).copy()
    out = write_mp4(tmp_path / "clip.mp4", frames)
    back = iio.imread(out)
    assert back.shape == (17, 64, 96, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 3  # flat frames survive H.264 almost exactly
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_one_frame_and_the_prompt_changes_the_picture(small_pipe):
    res = small_pipe.generate("a red car", 1, StarSampling(seed=1))
    assert res.frames.shape == (1, 256, 256, 3) and res.record["block_passes"] == 12
    other = small_pipe.generate("a blue boat", 1, StarSampling(seed=1)).frames
    assert not np.array_equal(res.frames, other)


def test_bad_inputs(small_pipe, tmp_path):
    with pytest.raises(ConfigError, match="allowed"):
        small_pipe.generate("x", 18, StarSampling())
    with pytest.raises(StepvarError, match="mp4"):
        write_mp4(tmp_path / "clip.png", np.zeros((2, 16, 16, 3), np.uint8))
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="needs --weights"):
        load_video_pipeline("infinitystar-8b")
    with pytest.raises(ConfigError, match="takes no --weights"):
        load_video_pipeline("infinitystar-tiny", weights="w")


def test_frames_from_request():
    from stepvar.video_pipeline import frames_from_request
    assert frames_from_request(None, None, 5) == 81 and frames_from_request(None, 2, 5) == 33
    assert frames_from_request(17, None, 5) == 17 and frames_from_request(None, 10, 10) == 161
    for frames, duration in ((17, 1), (None, 0), (None, 7), (20, None)):
        with pytest.raises(ConfigError):
            frames_from_request(frames, duration, 10)


def test_output_checks_and_files(tmp_path):
    from stepvar.video_pipeline import VideoResult, check_video_output, save_video_outputs
    with pytest.raises(StepvarError, match="17 frames go to an .mp4"):
        check_video_output(tmp_path / "a.png", 17)
    with pytest.raises(StepvarError):
        check_video_output(tmp_path / "a.gif", 17)
    check_video_output(tmp_path / "a.png", 1)
    assert not list(tmp_path.iterdir())
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[2] = 200
    res = VideoResult(frames, torch.zeros(1), {}, {"prompt": "p", "frames": 5})
    written = save_video_outputs(tmp_path / "clip.mp4", res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.mp4", "clip.poster.png"]
    assert iio.imread(written["poster"]).min() == 200  # the middle frame
    assert iio.imread(written["video"]).shape == (5, 32, 48, 3)
