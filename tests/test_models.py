"""Generator and critic shapes, label conditioning, and the gradient penalty."""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from conftest import tag


ARCHS = ["conv2d", "conv1d", "seed"]


def make_generator(arch, n_mels=16, n_frames=16, latent_dim=10, n_classes=3, cond="cbn", scaling="affine"):
    """The generator that --arch arch (with --g_cond cond, --scaling scaling) builds, at width 4."""
    cfg = tag.Config(arch=arch, n_mels=n_mels, n_frames=n_frames, latent_dim=latent_dim, embed_dim=5, g_channels=4,
                     g_cond=cond, scaling=scaling)
    return tag.build_models(cfg, n_classes)[0]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_mels,n_frames", [(80, 64), (32, 128), (80, 512), (16, 16)])
def test_shapes(n_mels, n_frames, arch):
    g = make_generator(arch, n_mels, n_frames)
    labels = torch.tensor([0, 1, 2, 0])
    x = g(torch.randn(4, 10), labels)
    assert x.shape == (4, 1, n_mels, n_frames)
    for conditioning in ("concat", "projection"):
        for mbstd in (False, True):
            for critic_arch in ("conv2d", "conv1d", "both"):
                cfg = tag.Config(n_mels=n_mels, n_frames=n_frames, d_channels=4, critic_cond=conditioning, mbstd=mbstd,
                                 critic_arch=critic_arch)
                score, logits = tag.build_models(cfg, 3)[1](x, labels)
                assert score.shape == (4,) and logits.shape == (4, 3)


def test_the_coarse_critic_adds_a_score_of_the_pooled_mel_that_hears_four_times_as_far():
    torch.manual_seed(0)
    mel, labels = torch.randn(2, 1, 80, 352), torch.tensor([0, 2])
    for critic_arch in ("conv2d", "conv1d", "both"):  # every critic design gets its coarse twin
        cfg = tag.Config(n_frames=352, d_channels=4, critic_arch=critic_arch, coarse_critic=4)
        critic = tag.build_models(cfg, 3)[1]
        assert isinstance(critic, tag.CoarseCritic) and type(critic.coarse) is type(critic.critic)
        with torch.no_grad():
            (score, logits), (fine, fine_logits) = critic(mel, labels), critic.critic(mel, labels)
            coarse = critic.coarse(nn.functional.avg_pool2d(mel, (1, 4)), labels)[0]
        assert torch.allclose(score, fine + coarse) and torch.equal(logits, fine_logits)  # scores add; logits: fine's
    assert not isinstance(tag.build_models(tag.Config(n_frames=352, d_channels=4, coarse_critic=1), 3)[1],
                          tag.CoarseCritic)

    def frames_heard(features, pool):  # the input frames that reach the middle position of a critic's last conv
        x = torch.zeros(1, 1, 80, 352, requires_grad=True)
        h = features(nn.functional.avg_pool2d(x, (1, pool)))
        h[..., h.shape[-1] // 2].sum().backward()
        return x.grad[0, 0].abs().sum(0).nonzero().numel()

    critic = tag.build_models(tag.Config(n_frames=352, d_channels=4, coarse_critic=4), 3)[1]
    assert frames_heard(critic.critic.features, 1) <= 46 < 4 * 40 <= frames_heard(critic.coarse.features, 4)
    gp = tag.gradient_penalty(critic, mel, torch.randn_like(mel), labels)
    gp.backward()  # the penalty's double backward passes through both critics
    assert critic.coarse.features[0].weight.grad.abs().sum() > 0


def test_the_conv1d_critic_sees_the_whole_spectrum_in_its_first_layer():
    critic = tag.OtherCritic(3, 80, 64, channels=4, conditioning="projection", arch="conv1d")
    first = critic.features[0]
    assert isinstance(first, torch.nn.Conv1d) and first.in_channels == 80  # every filter spans all 80 mel bins
    x = torch.zeros(2, 1, 80, 64, requires_grad=True)
    critic(x, torch.tensor([0, 1]))[0].sum().backward()
    assert (x.grad[0, 0, :, 32].abs() > 0).all()  # one frame's score gradient reaches every bin


@pytest.mark.core
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scaling,check", [("affine", lambda x: x.abs().max() <= 1), ("log1p", lambda x: x.min() >= 0)])
def test_output_activation(scaling, check, arch):
    g = make_generator(arch, n_classes=2, scaling=scaling)
    assert check(g(torch.randn(8, 10), torch.randint(2, (8,))))


@pytest.mark.core
@pytest.mark.parametrize("conditioning", ["concat", "projection"])
@pytest.mark.parametrize("arch", ARCHS)
def test_label_changes_outputs(conditioning, arch):
    torch.manual_seed(0)
    g = make_generator(arch, n_frames=32).eval()
    c = tag.OtherCritic(3, 16, 32, channels=4, conditioning=conditioning)
    z = torch.randn(1, 10).repeat(2, 1)
    labels = torch.tensor([0, 2])
    x = g(z, labels)
    assert not torch.allclose(x[0], x[1])
    mel = torch.randn(1, 1, 16, 32).repeat(2, 1, 1, 1)
    score, _ = c(mel, labels)
    assert not torch.allclose(score[0], score[1])


@pytest.mark.core
@pytest.mark.parametrize("arch", ["conv2d", "conv1d"])
def test_conditional_batchnorm_carries_the_label(arch):
    # With the label embedding beside z silenced, only class-conditional BatchNorm can tell the classes apart.
    torch.manual_seed(0)
    outputs = {}
    for cond in ("cbn", "concat"):
        g = make_generator(arch, n_frames=32, cond=cond).eval()
        with torch.no_grad():
            g.embed.weight.zero_()
            for m in g.modules():
                if isinstance(m, tag.CondBatchNorm) and m.gain is not None:
                    m.gain.weight.normal_(1, 0.5)
                    m.bias.weight.normal_(0, 0.5)
        outputs[cond] = g(torch.randn(1, 10).repeat(2, 1), torch.tensor([0, 2]))
    assert not torch.allclose(outputs["cbn"][0], outputs["cbn"][1])
    assert torch.allclose(outputs["concat"][0], outputs["concat"][1])


def test_seed_arch_is_the_original_design():
    g = make_generator("seed", cond="cbn")
    kinds = {type(m) for m in g.modules()}
    assert nn.ConvTranspose2d in kinds and nn.Upsample not in kinds
    assert all(m.gain is None for m in g.modules() if isinstance(m, tag.CondBatchNorm))  # no class-conditional BN
    cfg = tag.parse_config(["--arch", "seed", "--base_path", "x"])
    assert (cfg.scaling, cfg.critic_cond, cfg.aux_weight, cfg.ema, cfg.augment) == ("log1p", "concat", 0.0, 0.0, False)
    assert tag.parse_config(["--arch", "seed", "--base_path", "x", "--ema", "0.9"]).ema == 0.9  # flags still win


@pytest.mark.core
def test_minibatch_std_keeps_real_and_fake_groups_apart():
    h = torch.randn(8, 3, 2, 2)
    out = tag.minibatch_std(h, group=4)
    assert out.shape == (8, 4, 2, 2)
    changed = h.clone()
    changed[4:] *= 10  # only the second half (the fakes of a real+fake batch) changes...
    again = tag.minibatch_std(changed, group=4)
    assert torch.equal(again[:4, 3], out[:4, 3])  # ...and the first half's feature does not move
    assert not torch.allclose(again[4:, 3], out[4:, 3])


@pytest.mark.core
def test_augment_shifts_and_cuts_time_only():
    torch.manual_seed(0)
    B, M, T = 16, 8, 32
    x = torch.randn(B, 1, M, T)
    floor = torch.linspace(-1, -0.5, M).view(M, 1, 1)  # a per-bin silence level, as "per_bin" scaling has
    y = tag.augment(x, floor)
    assert y.shape == x.shape and not torch.equal(y, x)
    for b in range(B):
        for t in range(T):  # every output frame is silence or an input frame of the same clip: nothing moves in pitch
            frame = y[b, 0, :, t]
            assert torch.equal(frame, floor.view(M)) or any(torch.equal(frame, x[b, 0, :, s]) for s in range(T))
    silent = (y[:, 0] == floor.view(1, M, 1)).all(1).sum(1)  # silent frames per clip: the cutout, plus the shift
    assert (silent >= T // 4).all()
    x.requires_grad_(True)
    tag.augment(x, floor).sum().backward()  # differentiable: the generator learns through it
    assert x.grad.abs().sum() > 0


def test_config_rejects_sizes_the_models_cannot_take():
    with pytest.raises(SystemExit, match="n_frames=100"):
        tag.check_config(tag.Config(n_frames=100))
    with pytest.raises(SystemExit, match="scaling"):
        tag.check_config(tag.Config(scaling="db"))
    with pytest.raises(SystemExit, match="arch"):
        tag.check_config(tag.Config(arch="transformer"))
    with pytest.raises(SystemExit, match="gp_every=0"):
        tag.check_config(tag.Config(gp_every=0))
    with pytest.raises(SystemExit, match="batch_size=1 is too small"):  # BatchNorm would fail mid-training
        tag.check_config(tag.Config(batch_size=1))


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so the penalty is exactly (||w|| - 1)^2."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))
        self.b = nn.Parameter(torch.randn(()))

    def forward(self, x, labels):
        return (x * self.w).flatten(1).sum(1) + self.b, None


@pytest.mark.core
def test_gradient_penalty_exact_on_linear_critic():
    torch.manual_seed(0)
    critic = LinearCritic((1, 8, 16))
    real, fake = torch.randn(5, 1, 8, 16), torch.randn(5, 1, 8, 16)
    gp = tag.gradient_penalty(critic, real, fake, torch.zeros(5, dtype=torch.long))
    expected = (critic.w.norm() - 1) ** 2
    assert torch.allclose(gp, expected, rtol=1e-5)
    gp.backward()  # the penalty is differentiable in the critic's weights (double backward)
    assert torch.allclose(critic.w.grad, 2 * (critic.w.norm() - 1) * critic.w / critic.w.norm(), rtol=1e-4)


@pytest.mark.core
def test_gradient_penalty_interpolates_with_fresh_eps():
    # A critic that is quadratic in x has an input gradient that depends on where it is evaluated, so the penalty
    # changes with eps: two calls from different RNG states give different values.
    critic = lambda x, labels: ((x ** 2).flatten(1).sum(1), None)
    real, fake = torch.ones(4, 1, 4, 4), -torch.ones(4, 1, 4, 4)
    torch.manual_seed(1)
    a = tag.gradient_penalty(critic, real, fake, None)
    torch.manual_seed(2)
    b = tag.gradient_penalty(critic, real, fake, None)
    assert not torch.allclose(a, b)


@pytest.mark.core
def test_standing_stats_fit_batchnorm_to_averaged_weights():
    torch.manual_seed(0)
    g = tag.Generator(10, 3, 16, 16, channels=4).eval()  # the default design
    with torch.no_grad():
        g.fc[0].weight.mul_(3.0)  # weights moved (as an average of weights does) while the running stats stayed
    tag.standing_stats(g, n_classes=3, latent_dim=10, batches=4, batch_size=32, seed=5)
    noise = torch.Generator().manual_seed(5)  # the same inputs standing_stats drew
    inputs = [(torch.randn(32, 10, generator=noise), torch.randint(3, (32,), generator=noise)) for _ in range(4)]
    with torch.no_grad():
        pre_bn = torch.cat([g.fc[0](torch.cat([z, g.embed(y)], 1)) for z, y in inputs])
    bn = g.fc[1]
    assert torch.allclose(bn.running_mean, pre_bn.mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not g.training  # the module is left as it was found


@pytest.mark.core
@pytest.mark.parametrize("shape", [(6, 3, 32), (6, 3, 4, 32)])  # conv1d's (B, C, T), conv2d's (B, C, n_mels, T)
def test_sound_batchnorm_takes_its_statistics_from_the_frames_that_hold_sound(shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 2 + 1
    x[..., 8:] = -3.0  # silence after the clip: the example's last three quarters
    norm = tag.SoundBatchNorm(3, frames=16, of=64)  # 16 of every 64 frames: 8 of this layer's 32
    dims = [0, *range(2, len(shape))]
    y = norm(x)
    sound = y[..., :8]
    assert sound.mean(dims).abs().max() < 1e-5 and (sound.var(dims, unbiased=False) - 1).abs().max() < 1e-3
    assert torch.allclose(norm.running_mean, 0.1 * x[..., :8].mean(dims), atol=1e-6)  # momentum 0.1 from zero
    mean, var = x[..., :8].mean(dims, keepdim=True), x[..., :8].var(dims, unbiased=False, keepdim=True)
    assert torch.allclose(y[..., 8:], ((-3.0 - mean) * torch.rsqrt(var + norm.eps)).expand_as(y[..., 8:]), atol=1e-5)
    whole, plain = tag.SoundBatchNorm(3, 64, 64), (nn.BatchNorm1d if len(shape) == 3 else nn.BatchNorm2d)(3)
    assert torch.equal(whole(x), plain(x)) and torch.equal(whole.running_var, plain.running_var)  # all frames: plain
    norm.eval()
    assert torch.allclose(norm(x), (x - norm.running_mean.view(-1, *[1] * (len(shape) - 2)))
                          * torch.rsqrt(norm.running_var.view(-1, *[1] * (len(shape) - 2)) + norm.eps), atol=1e-6)


def test_every_generator_design_takes_batchnorm_statistics_over_norm_frames():
    for arch in ARCHS:
        cfg = tag.Config(arch=arch, n_mels=16, n_frames=64, norm_frames=16, latent_dim=10, embed_dim=5, g_channels=4)
        generator = tag.build_models(cfg, 3)[0]
        norms = [m.norm for m in generator.modules() if isinstance(m, tag.CondBatchNorm)] + [generator.fc[1]]
        assert len(norms) >= 4 and all((n.frames, n.of) == (16, 64) for n in norms), arch
        assert isinstance(generator.fc[1], tag.SeedBatchNorm) and generator.fc[1].shape == generator.shape, arch
        whole = tag.build_models(dataclasses.replace(cfg, norm_frames=64), 3)[0]  # clips fill it: DCGAN's, per feature
        assert type(whole.fc[1]) is nn.BatchNorm1d and whole.fc[1].num_features == math.prod(whole.shape), arch


@pytest.mark.core
def test_the_generator_can_keep_its_seed_quiet_after_the_clips():
    torch.manual_seed(0)
    generator = tag.Generator(8, 3, 16, 64, channels=2, embed_dim=4, norm_frames=16)  # seed (16, 4): 1 position sound
    with torch.no_grad():  # an fc that has learnt to leave the seed positions after the clips almost quiet
        fc = generator.fc[0]
        fc.weight.view(*generator.shape, -1)[:, 1:] *= 1e-3
        fc.bias.view(generator.shape)[:, 1:] *= 1e-3
    z, labels = torch.randn(32, 8), torch.arange(32) % 3
    seed = generator.fc(torch.cat([z, generator.embed(labels)], 1)).view(32, *generator.shape)  # (B, C, positions)
    assert seed[..., 0].std(0).mean() > 0.3  # the sound's position: normalised, about half of it ReLU-active
    assert seed[..., 1:].std(0).max() < 0.01  # the silence's stay still (no z-noise), not held at unit variance


class FakeData:
    """What train_step reads from MelClips: random crops (B, 1, 16, 16) of 3 classes, and the silence floor."""

    def __init__(self):
        self.labels_d, self.silence = torch.arange(12) % 3, torch.full((16, 1, 1), -1.0)
        self.mels = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # the same each time

    def sample(self, n):
        return torch.randint(12, (n,))

    def crops(self, idx):
        return self.mels[idx], self.labels_d[idx]


def step_setup(**kw):
    torch.manual_seed(0)
    cfg = tag.Config(n_mels=16, n_frames=16, latent_dim=8, embed_dim=4, g_channels=4, d_channels=4, batch_size=4,
                     **{"n_critic": 1, **kw})
    generator, critic = tag.build_models(cfg, 3)
    opt_g, opt_c = (torch.optim.Adam(m.parameters(), 1e-3) for m in (generator, critic))
    scalers = [torch.amp.GradScaler("cpu", enabled=False) for _ in range(2)]
    gan = tag.Gan(generator, critic, opt_g, opt_c, *scalers, None)
    return lambda step=0: tag.train_step(gan, FakeData(), cfg, step), critic


@pytest.mark.core
@pytest.mark.parametrize("aux_weight", [0.0, 1.0])
def test_auxiliary_classifier_loss_trains_the_critic_head(aux_weight):
    step, critic = step_setup(aux_weight=aux_weight)
    before = critic.classify.weight.clone()
    step()
    moved = not torch.equal(critic.classify.weight, before)
    assert moved == (aux_weight > 0)  # the head learns from the classification loss only


@pytest.mark.core
def test_lazy_penalty_every_k_steps_weighted_k_times(monkeypatch):
    calls = []
    monkeypatch.setattr(tag, "gradient_penalty", lambda *a: calls.append(1) or torch.tensor(0.5, requires_grad=True))
    step, _ = step_setup(gp_every=3, lambda_gp=10.0, aux_weight=0.0)  # no classification term in loss/critic
    for s in range(6):
        loss_c, _, wdist, gp = step(s)
        penalised = s % 3 == 0
        assert gp.item() == (0.5 if penalised else 0.0)
        # loss/critic = -wdist + gp_every * lambda_gp * gp on the penalised steps, -wdist on the others
        assert loss_c.item() == pytest.approx(-wdist.item() + (3 * 10.0 * 0.5 if penalised else 0.0), abs=1e-5)
    assert len(calls) == 2


@pytest.mark.core
def test_augment_applies_to_real_and_fake_alike(monkeypatch):
    seen, real_augment, mels = [], tag.augment, FakeData().mels

    def spy(x, floor):
        is_real = all(any(torch.equal(row, m) for m in mels) for row in x)
        seen.append("real" if is_real else "fake" + ("+grad" if x.requires_grad else ""))
        return real_augment(x, floor)

    monkeypatch.setattr(tag, "augment", spy)
    step, _ = step_setup(augment=True, n_critic=2)
    step()
    # each critic step sees an augmented real batch and an augmented fake batch; the generator step, augmented fakes
    assert seen == ["real", "fake", "real", "fake", "fake+grad"]
    seen.clear()
    step_setup(augment=False)[0]()
    assert seen == []
