"""bench/critic_ideas.py, the critic ideas screened for issues #18 and #32: each must change what it claims and nothing else,
or its row in bench/RESULTS.md measures something else."""
import os
import sys

import torch
from torch import nn

from conftest import tag

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import critic_ideas  # noqa: E402  (bench/critic_ideas.py)


def test_freq_dilated_replaces_the_first_layer_shape_for_shape():
    x = torch.randn(2, 1, 80, 64)
    layer = critic_ideas.FreqDilated(1, 16)
    assert layer(x).shape == nn.Conv2d(1, 16, 4, 2, 1)(x).shape == (2, 16, 40, 32)
    # output row 4 (centred on bin 8) hears bins 8 +- 1, 2, 4 and 8: 17 bins across, where a 4x4 kernel hears 4
    x = torch.zeros(1, 1, 80, 64, requires_grad=True)
    layer(x)[0, :, 4].sum().backward()
    heard = x.grad[0, 0].abs().sum(1).nonzero().flatten().tolist()
    assert heard == [0, 4, 6, 7, 8, 9, 10, 12, 16]


def test_feature_matching_adds_its_term_to_the_generator_step_only():
    torch.manual_seed(0)
    critic = tag.Critic(3, 32, 32, channels=4)
    wrapped = critic_ideas.FeatureMatching(critic, weight=10.0)
    real, fake, labels = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32) + 1, torch.tensor([0, 1, 2, 0])
    both = torch.cat([real, fake])
    assert torch.equal(wrapped(both, labels.repeat(2))[0], critic(both, labels.repeat(2))[0])  # critic step: as is
    assert len(wrapped.real) == 4  # the real half's mean features, one per LeakyReLU
    critic.requires_grad_(False)  # what generator_step does before the generator step
    plain, matched = critic(fake, labels)[0], wrapped(fake, labels)[0]
    fm = (plain - matched) / 10.0  # the same for every sample: a mean over the batch
    assert torch.allclose(fm, fm[0].expand(4)) and fm[0] > 0
    wrapped.real = [h.detach().mean(0) for h in wrapped.taken]  # real features = the fakes' own: nothing to match
    assert torch.allclose(wrapped(fake, labels)[0], plain)


def test_cepstral_view_shows_a_voice_s_pitch_as_a_peak_and_takes_the_penalty():
    cfg, t = tag.Config(), torch.arange(22050) / 22050
    voiced = sum(torch.sin(2 * torch.pi * 150.0 * k * t) for k in range(1, 21)) / 20  # 150 Hz, 20 harmonics
    mel = tag.GanScale().to_gan(tag.MelSpectrogram(cfg)(voiced[None])[..., :64]).unsqueeze(1)  # (1, 1, 80, 64)
    torch.manual_seed(0)
    view = critic_ideas.CepstralView(tag.Critic(3, 80, 64, channels=4), cfg)
    assert view.critic.features[0].in_channels == 2  # the mel and its cepstrum
    q = view.cepstrum(mel)[0, 0].mean(-1)  # (80,) over quefrencies 16..95
    # stripes 150 Hz apart = 6.97 bins of 21.5 Hz: the cepstrum (2 x 185 bins) peaks at 370 / 6.97 = 53, row 53 - 16 = 37
    assert q.argmax().item() == 37
    real, fake = mel.repeat(2, 1, 1, 1), torch.randn(2, 1, 80, 64).clamp(-1, 1)
    gp = tag.gradient_penalty(view, real, fake, torch.tensor([0, 1]))
    gp.backward()  # the double backward passes through the cepstrum
    assert torch.isfinite(gp) and view.critic.features[0].weight.grad[:, 1].abs().sum() > 0
