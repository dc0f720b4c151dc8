"""bench/critic_ideas.py, the critic ideas screened for issues #18 and #32: each must change what it claims and nothing else,
or its row in bench/RESULTS.md measures something else."""
import os
import sys

import torch
from torch import nn

from conftest import tag

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import class_probe  # noqa: E402  (bench/class_probe.py)
import critic_ideas  # noqa: E402  (bench/critic_ideas.py)
import kid_probe  # noqa: E402  (bench/kid_probe.py)


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


def test_harmonic_head_draws_stripes_at_whole_multiples_of_its_pitch():
    cfg = tag.Config()
    torch.manual_seed(0)
    generator = tag.Generator(8, 3, 80, 64, channels=4).eval()
    plain_out = generator.out
    head = generator.out = critic_ideas.HarmonicOut(plain_out, cfg)
    z, labels = torch.randn(3, 8), torch.arange(3)
    mel = lambda: tag.GanScale().from_gan(generator(z, labels).squeeze(1))  # (3, n_mels, 64) log-mel
    with torch.no_grad():
        quiet = mel()  # voicing 0.24 at the start: a faint comb
        head.pitch.bias.copy_(torch.tensor([0.0, 6.0]))  # fully voiced at 179 Hz
        voiced = mel()
        head.pitch.bias.copy_(torch.tensor([0.0, -30.0]))  # unvoiced: the generator's own output
        plain = mel()
        generator.out = plain_out
        own = mel()  # the Generator without the head
    assert torch.allclose(plain, own, atol=1e-4)  # unvoiced, the head adds nothing
    assert kid_probe.harmonicity(voiced, cfg) > 1.5 * kid_probe.harmonicity(plain, cfg)
    assert kid_probe.harmonicity(quiet, cfg) < kid_probe.harmonicity(voiced, cfg)


def test_harmonic_grid_mixes_the_stripes_of_its_pitches_by_softmax():
    cfg = tag.Config()
    torch.manual_seed(0)
    generator = tag.Generator(8, 3, 80, 64, channels=4).eval()
    head = generator.out = critic_ideas.HarmonicOut(generator.out, cfg, grid=48)
    z, labels = torch.randn(3, 8), torch.arange(3)
    with torch.no_grad():
        head.pitch.bias.copy_(torch.cat([torch.full((48,), -30.0), torch.tensor([6.0])]))
        head.pitch.bias[20] = 30.0  # one pitch of the grid, fully voiced
        one = tag.GanScale().from_gan(generator(z, labels).squeeze(1))
        f0 = (80.0 * 5.0 ** torch.linspace(0, 1, 48)[20]).view(1, 1)
        assert torch.allclose(head.grid_stripes[:, 20], head.stripes(f0)[0, :, 0], atol=1e-5)  # the grid holds each pitch's
        head.pitch.bias[:48] = 0.0  # every pitch alike: their stripes average out
        blur = tag.GanScale().from_gan(generator(z, labels).squeeze(1))
    assert kid_probe.harmonicity(one, cfg) > 1.5 * kid_probe.harmonicity(blur, cfg)


def test_band_pool_tells_which_band_a_sound_is_in_where_the_default_pooling_cannot():
    torch.manual_seed(0)
    plain, banded = tag.Critic(2, 160, 64, channels=4), critic_ideas.BandPooled(2, 160, 64, channels=4)
    banded.features.load_state_dict(plain.features.state_dict())
    low, high = torch.full((2, 1, 1, 160, 64), -1.0).unbind(0)
    low[..., 64:80, 24:40] = high[..., 96:112, 24:40] = 1.0  # one patch, 32 bins apart (2 positions of the last layer)
    labels = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        c_low, c_high = plain(low, labels)[1], plain(high, labels)[1]
        (score, b_low), b_high = banded(low, labels), banded(high, labels)[1]
    assert torch.allclose(c_low, c_high, atol=1e-5)  # summed over frequency: the same logits in either band
    assert (b_low - b_high).abs().max() > 1e-3  # per band: they differ
    assert score.shape == (1,) and b_low.shape == (1, 2)


def test_class_probe_counts_what_a_critic_takes_each_class_for():
    class Says(nn.Module):  # a critic whose classifier answers class 1 for everything
        def forward(self, mel, labels):
            return mel.sum((1, 2, 3)), torch.tensor([0.0, 1.0, 0.0]).expand(len(mel), 3)

    class Data:
        classes, labels = ["a", "b", "c"], torch.tensor([0, 0, 1, 2, 2, 2])

        def crops(self, idx):
            return torch.zeros(len(idx), 1, 8, 16), self.labels[idx]

        def __len__(self):
            return len(self.labels)

    m = class_probe.critic_confusion(Says(), Data(), batch=4)
    assert m.tolist() == [[0, 2, 0], [0, 1, 0], [0, 3, 0]]
    assert class_probe.taken_for(m, Data.classes) == "a 0% (b 100%); c 0% (b 100%)"
    mixed = class_probe.confusion(torch.tensor([0, 2, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert class_probe.taken_for(mixed, Data.classes) == "a 50% (c 50%)"


def test_class_probe_judges_the_mels_it_is_given():
    class Judge:  # an evaluator whose judge takes the loudest of the first 3 mel bands for the class
        classes = ["a", "b", "c"]

        def heard_set(self, logmel, labels):
            return logmel[:, :3].mean(-1), None, None, labels

    mel = torch.full((4, 8, 16), -11.5)
    for i, k in enumerate([0, 1, 1, 2]):
        mel[i, k] = 0.0
    m = class_probe.judged(Judge(), mel, torch.tensor([0, 0, 1, 2]))
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_z_cbn_starts_as_the_default_and_lets_z_set_each_channel_for_the_whole_clip():
    torch.manual_seed(0)
    plain = tag.Generator(8, 3, 80, 64, channels=4).eval()
    torch.manual_seed(0)
    zgen = critic_ideas.ZGenerator(8, 3, 80, 64, channels=4).eval()
    z, labels = torch.randn(3, 8), torch.arange(3)
    with torch.no_grad():
        assert torch.equal(zgen(z, labels), plain(z, labels))  # zero-initialised: the default generator's output
        last = zgen.blocks[-1]
        h = torch.randn(3, last.conv[1].in_channels, 32)
        before = last(h, (labels, z))
        last.norm.bias.bias.fill_(0.0)
        last.norm.bias.weight.normal_()
        shift = last(h, (labels, z)) - before  # through the ReLU: where both are positive, the bias b(z) alone
    both = (before > 0) & (before + shift > 0)
    expected = last.norm.bias(z).detach().unsqueeze(-1).expand_as(shift)
    assert torch.allclose(shift[both], expected[both], atol=1e-5) and both.any()  # per channel, every frame alike
    assert not torch.allclose(expected[0], expected[1])  # and set by z


def test_coarse_uncond_leaves_the_label_to_the_full_rate_critic():
    cfg = tag.Config(n_frames=64, coarse_critic=4, d_channels=4, g_channels=4)
    mel, labels = torch.randn(1, 1, 80, 64).expand(3, -1, -1, -1), torch.arange(3)
    pooled = nn.functional.avg_pool2d(mel, (1, 4))  # (3, 1, 80, 16): what the coarse critic hears
    built = {}
    for idea in ("default", "coarse_uncond"):
        critic_ideas.active["idea"] = idea
        torch.manual_seed(0)
        built[idea] = critic_ideas.build_models(cfg, 3)[1]
    critic_ideas.active["idea"] = "default"
    with torch.no_grad():
        plain, uncond = built["default"], built["coarse_uncond"]
        assert isinstance(uncond.coarse, critic_ideas.UnconditionalCritic)
        assert plain.coarse(pooled, labels)[0].std() > 1e-3  # the script's coarse critic projects the label
        coarse = uncond.coarse(pooled, labels)[0]
        assert torch.allclose(coarse, coarse[0].expand(3))  # this one cannot
        fine = uncond.critic(mel, labels)[0]
        assert fine.std() > 1e-3  # the full-rate critic still can
        assert torch.allclose(uncond(mel, labels)[0], fine + coarse)  # and their scores add, as the script's do


def test_coarse_own_gp_penalises_each_critic_on_its_own():
    cfg = tag.Config(n_frames=64, coarse_critic=4, d_channels=4, g_channels=4)
    torch.manual_seed(0)
    critic = critic_ideas.build_models(cfg, 3)[1]
    real, fake, labels = torch.randn(3, 1, 80, 64), torch.randn(3, 1, 80, 64), torch.arange(3)
    with torch.no_grad():
        critic.coarse.fc.weight.mul_(50.0)  # a coarse critic far steeper than the full-rate one
    coarse = lambda mel, labels: critic.coarse(nn.functional.avg_pool2d(mel, (1, 4)), labels)  # noqa: E731
    torch.manual_seed(1)
    shared = critic_ideas.gradient_penalty(critic, real, fake, labels)  # the script's: one penalty on the sum
    torch.manual_seed(1)
    assert torch.equal(shared, tag.gradient_penalty(critic, real, fake, labels))
    critic_ideas.active["idea"] = "coarse_own_gp"
    try:
        torch.manual_seed(1)
        own = critic_ideas.gradient_penalty(critic, real, fake, labels)
    finally:
        critic_ideas.active["idea"] = "default"
    torch.manual_seed(1)
    fine_gp = tag.gradient_penalty(critic.critic, real, fake, labels)
    coarse_gp = tag.gradient_penalty(coarse, real, fake, labels)  # eps drawn after the first's, as in own
    assert torch.allclose(own, fine_gp + coarse_gp)
    assert not torch.allclose(own, shared, rtol=0.05)
