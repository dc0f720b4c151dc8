"""The algorithm itself: which way each loss moves each network, what the critic and the penalty see, the EMA, and a
short training run that must learn. Marked `core`: `python -m pytest -q -m core tests` runs them (and the other
algorithm tests) alone, and bench/mutations.py checks that they catch a broken GAN."""
import copy

import pytest
import torch

from conftest import tag, tiny_config, write_tone

pytestmark = pytest.mark.core

RECIPES = {"default": [], "seed": ["--arch", "seed"]}  # the shipped recipe and the original design, kept working


def recipe(name, **sizes):
    """The Config a run on the CPU with this recipe gets (presets applied), at test sizes."""
    sizes = dict(dict(n_mels=16, n_frames=32, latent_dim=8, embed_dim=4, g_channels=8, d_channels=8, batch_size=8),
                 **sizes)
    flags = ["--base_path", "data", "--device", "cpu", *RECIPES[name]]
    return tag.parse_config(flags + [a for k, v in sizes.items() for a in (f"--{k}", str(v))])


def models(cfg, n_classes=3, seed=0):
    """Generator, critic and their Adam optimisers as build_run makes them (fp32, no gradient scaling)."""
    torch.manual_seed(seed)
    generator, critic = tag.build_models(cfg, n_classes)
    opt_g, opt_c = (torch.optim.Adam(m.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2)) for m in (generator, critic))
    return generator, critic, opt_g, opt_c


def no_scaler():
    return torch.amp.GradScaler("cpu", enabled=False)


def batch(cfg, n_classes=3, seed=1):
    """A fixed batch: real mels in the GAN's range (B, 1, n_mels, T), labels (B,), noise (B, latent_dim)."""
    rng = torch.Generator().manual_seed(seed)
    B = cfg.batch_size
    real = torch.rand(B, 1, cfg.n_mels, cfg.n_frames, generator=rng) * 2 - 1
    if cfg.scaling == "log1p":
        real = (real + 1) / 2  # log1p's range is [0, inf): the generator's output is a ReLU
    return real, torch.arange(B) % n_classes, torch.randn(B, cfg.latent_dim, generator=rng)


def scores(critic, mel, labels):
    with torch.no_grad():
        return critic(mel, labels)


def parameters(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------- which way each step moves

@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("penalise", [False, True])
def test_a_critic_step_raises_real_minus_fake_on_the_same_inputs(name, penalise):
    cfg = recipe(name)
    generator, critic, _, opt_c = models(cfg)
    real, labels, z = batch(cfg)
    with torch.no_grad():
        fake = generator(z, labels)
    before = scores(critic, real, labels)[0].mean() - scores(critic, fake, labels)[0].mean()
    g_before = parameters(generator)
    _, wdist, gp = tag.critic_step(critic, opt_c, no_scaler(), real, fake, labels, cfg, None, penalise)
    after = scores(critic, real, labels)[0].mean() - scores(critic, fake, labels)[0].mean()
    assert wdist.item() == pytest.approx(before.item(), abs=1e-5)  # wdist is D(real) - D(fake), not its negative
    assert (gp is not None) == penalise
    assert after > before + 1e-4, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(g_before, generator.parameters()))


@pytest.mark.parametrize("name", RECIPES)
def test_a_generator_step_raises_the_critics_score_of_its_fakes_and_leaves_the_critic_alone(name):
    cfg = recipe(name)
    generator, critic, opt_g, opt_c = models(cfg)
    real, labels, z = batch(cfg)
    with torch.no_grad():
        fake = generator(z, labels)
    tag.critic_step(critic, opt_c, no_scaler(), real, fake, labels, cfg, None, True)  # critic grads exist now
    c_before = parameters(critic)
    before = scores(critic, generator(z, labels), labels)[0].mean()
    tag.generator_step(generator, critic, opt_g, no_scaler(), z, labels, cfg, None)
    after = scores(critic, generator(z, labels), labels)[0].mean()
    assert after > before + 1e-4, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(c_before, critic.parameters()))  # bitwise: the critic did not move
    assert all(p.requires_grad for p in critic.parameters())  # and trains again at the next critic step


@pytest.mark.parametrize("aux_weight", [0.0, 1.0])
def test_the_generators_loss_has_a_class_term_only_with_aux_weight(aux_weight):
    cfg = recipe("default", aux_weight=aux_weight)
    generator, critic, opt_g, _ = models(cfg)
    _, labels, z = batch(cfg)
    with torch.no_grad():
        score, logits = critic(generator(z, labels), labels)
    expected = aux_weight * torch.nn.functional.cross_entropy(logits, labels) - score.mean()
    loss_g = tag.generator_step(generator, critic, opt_g, no_scaler(), z, labels, cfg, None)
    assert loss_g.item() == pytest.approx(expected.item(), abs=1e-5)


def own_class_probability(generator, critic, z, labels):
    with torch.no_grad():
        return critic(generator(z, labels), labels)[1].softmax(1)[torch.arange(len(labels)), labels].mean()


def test_the_class_term_pushes_the_fakes_own_class_logit_up():
    moved = {}
    for aux_weight in (0.0, 1.0):
        cfg = recipe("default", aux_weight=aux_weight)
        generator, critic, opt_g, _ = models(cfg)
        with torch.no_grad():  # a constant score: only the class term is left to move the generator
            for layer in (critic.fc, critic.embed):
                for p in layer.parameters():
                    p.zero_()
        _, labels, z = batch(cfg)
        before = own_class_probability(generator, critic, z, labels)
        for _ in range(3):
            tag.generator_step(generator, critic, opt_g, no_scaler(), z, labels, cfg, None)
        moved[aux_weight] = (own_class_probability(generator, critic, z, labels) - before).item()
    assert moved[1.0] > 1e-4 and moved[0.0] == 0, moved


class Clips:
    """What train_step reads of MelClips: 12 fixed clips (1, 16, 32) of 3 classes, random batches of them, silence."""

    def __init__(self):
        self.labels_d, self.silence = torch.arange(12) % 3, torch.full((16, 1, 1), -1.0)
        self.mels = torch.rand(12, 1, 16, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def sample(self, n):
        return torch.randint(12, (n,))

    def crops(self, idx):
        return self.mels[idx], self.labels_d[idx]

    def label_of(self, mel):
        """The label of the clip mel is, or None for a mel that is not one of the clips (a fake, an interpolate)."""
        hits = [i for i, m in enumerate(self.mels) if torch.equal(m, mel)]
        return int(self.labels_d[hits[0]]) if hits else None


def wgan_setup(**kw):
    cfg = recipe("default", n_frames=32, batch_size=6, **kw)
    generator, critic, opt_g, opt_c = models(cfg)
    gan = tag.Gan(generator, critic, opt_g, opt_c, no_scaler(), no_scaler(), None)
    step = lambda i=0: tag.train_step(gan, data, cfg, i)
    data = Clips()
    return step, generator, critic, opt_g, opt_c, data


def test_each_train_step_is_n_critic_critic_updates_then_one_generator_update():
    step, generator, critic, opt_g, opt_c, _ = wgan_setup(n_critic=3)
    grads = []  # one entry each time autograd computes a gradient for a generator weight
    for p in generator.parameters():
        p.register_hook(lambda g: grads.append(1))
    step()
    step(1)
    n_params = len(list(generator.parameters()))
    assert {int(opt_c.state[p]["step"]) for p in critic.parameters()} == {6}
    assert {int(opt_g.state[p]["step"]) for p in generator.parameters()} == {2}
    assert len(grads) == 2 * n_params  # only the generator's own steps: the critic's losses never reach it


def test_the_critic_scores_each_real_clip_with_its_own_label():
    step, _, critic, _, _, data = wgan_setup(n_critic=2)
    checked = []

    def check(module, args):
        mel, labels = args
        for m, y in zip(mel, labels):
            label = data.label_of(m)
            if label is not None:
                checked.append(label == int(y))

    critic.register_forward_pre_hook(check)
    step()
    assert len(checked) >= 2 * 6 and all(checked)  # every real clip of both critic steps, each with its own label


def test_the_penalty_is_taken_at_interpolates_with_an_eps_per_example():
    seen = []
    critic = lambda x, labels: (seen.append(x.detach().clone()) or (x ** 2).flatten(1).sum(1) / 2, None)
    real, fake = torch.randn(64, 1, 4, 4), torch.randn(64, 1, 4, 4)
    gp = tag.gradient_penalty(critic, real, fake, None)
    (x,) = seen
    eps = ((x - fake) * (real - fake)).flatten(1).sum(1) / ((real - fake) ** 2).flatten(1).sum(1)  # (B,)
    rebuilt = eps.view(-1, 1, 1, 1) * real + (1 - eps.view(-1, 1, 1, 1)) * fake
    assert torch.allclose(x, rebuilt, atol=1e-5)  # on the segment from each fake to its real clip
    assert (eps >= 0).all() and (eps <= 1).all() and eps.std() > 0.15  # uniform and drawn for each example
    # d/dx ||x||^2 / 2 = x: the penalty is the mean of (||x|| - 1)^2 over the interpolates
    assert gp.item() == pytest.approx(((x.flatten(1).norm(dim=1) - 1) ** 2).mean().item(), rel=1e-5)


def test_the_critic_loss_is_minus_wdist_plus_the_weighted_penalty_and_the_class_term(monkeypatch):
    cfg = recipe("default", lambda_gp=7.0, gp_every=3, aux_weight=0.5)
    generator, critic, _, _ = models(cfg)
    real, labels, z = batch(cfg)
    fake = generator(z, labels).detach()
    monkeypatch.setattr(tag, "gradient_penalty", lambda *a: torch.tensor(0.25))
    loss, wdist, gp = tag.critic_loss(critic, real, fake, labels, cfg, None, True)
    score_real, logits = scores(critic, real, labels)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert wdist.item() == pytest.approx((score_real.mean() - scores(critic, fake, labels)[0].mean()).item(), abs=1e-5)
    assert loss.item() == pytest.approx((-wdist + 3 * 7.0 * 0.25 + 0.5 * ce).item(), abs=1e-5)
    assert tag.critic_loss(critic, real, fake, labels, cfg, None, False)[2] is None


# ---------------------------------------------------------------- the moving average, sampling, generate mode

def test_ema_update_is_the_moving_average_and_copies_batchnorm_statistics():
    torch.manual_seed(0)
    model = tag.Generator(8, 3, 16, 16, channels=4, embed_dim=4)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))  # BatchNorm statistics and counters move too
    expected = [0.9 * e + 0.1 * m for e, m in zip(parameters(ema), model.parameters())]
    tag.ema_update(ema, model, 0.9)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ema.parameters(), expected))
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), model.buffers()))


def test_the_loops_average_warms_up_and_then_decays_at_ema(tiny_dataset, tmp_path, monkeypatch):
    decays, update = [], tag.ema_update
    monkeypatch.setattr(tag, "ema_update", lambda ema, model, decay: decays.append(decay) or update(ema, model, decay))
    tag.train(tiny_config(tiny_dataset, tmp_path, ema=0.6, epoch_steps=30, log_every=10))
    assert len(decays) == 30 and decays[0] < 0.2  # early on the average must not remember the random start
    assert decays == sorted(decays) and decays[-1] == 0.6 and max(decays) == 0.6


def test_samples_are_mapped_back_to_hifigans_log_mel():
    class Constant(torch.nn.Module):
        def forward(self, z, labels):
            return torch.tensor([-1.0, 1.0]).repeat_interleave(8).view(1, 1, 16, 1).expand(len(z), 1, 16, 4)

    logmel = tag.sample_logmels(Constant(), torch.zeros(2, 8), torch.zeros(2, dtype=torch.long), tag.GanScale())
    assert logmel.shape == (2, 16, 4)
    assert torch.allclose(logmel[:, :8], torch.tensor(tag.LOG_FLOOR))  # -1 is silence: HiFi-GAN's clamp at 1e-5
    assert torch.allclose(logmel[:, 8:], torch.tensor(tag.LOG_FLOOR + tag.AFFINE_SPAN))


def test_generate_mode_samples_the_averaged_weights(tiny_dataset, tmp_path):
    result = tag.train(tiny_config(tiny_dataset, tmp_path, ema=0.9, epoch_steps=6))
    generator = tag.load_generator(tag.Config(out_dir=str(tmp_path), device="cpu", mode="generate"))[0]
    loaded = generator.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in result["generator_ema"].state_dict().items())
    assert not all(torch.equal(v, loaded[k]) for k, v in result["generator"].state_dict().items())


# ---------------------------------------------------------------- a short run must learn

@pytest.fixture(scope="module")
def pitched(tmp_path_factory):
    """Three classes far apart in the mel spectrum: a 250 Hz tone, a 2.5 kHz tone, and white noise."""
    root = tmp_path_factory.mktemp("pitched")
    for i in range(8):
        write_tone(str(root / "low" / f"{i}.wav"), 250 * (1 + 0.02 * i), seconds=0.5, seed=i)
        write_tone(str(root / "high" / f"{i}.wav"), 2500 * (1 + 0.02 * i), seconds=0.5, seed=i)
        write_tone(str(root / "noise" / f"{i}.wav"), 0, seconds=0.5, noise=0.3, seed=i)
    return str(root)


def class_profiles(logmels, labels, n_classes):
    """Each class's mean log-mel spectrum (n_classes, n_mels): where in frequency its energy lies."""
    return torch.stack([logmels[labels == c].mean((0, 2)) for c in range(n_classes)])


def test_a_short_run_learns_each_classs_spectrum(pitched, tmp_path):
    # The shipped recipe at tiny sizes for 240 generator steps (~15 s on one core). Afterwards the EMA generator's
    # mean spectrum of each class must lie nearer that class's real spectrum than any other class's, by a margin,
    # and much nearer than the untrained generator's was.
    cfg = recipe("default", n_mels=80, n_frames=16, batch_size=12, g_channels=8, d_channels=8)
    cfg = tag.dataclasses.replace(cfg, base_path=pitched, out_dir=str(tmp_path), epochs=1, epoch_steps=240,
                                  vocoder="griffinlim", samples_per_class=1, log_every=40)
    result = tag.train(cfg)
    data = tag.MelClips(cfg, torch.device("cpu"))
    n = len(data.classes)
    real = class_profiles(data.logmels(torch.arange(len(data))), data.labels, n)
    noise, labels = tag.seeded_noise(range(n), 16, cfg.latent_dim, seed=7)
    fake = class_profiles(tag.sample_logmels(result["generator_ema"], noise, labels, data.scale), labels, n)
    untrained = tag.build_models(result["config"], n)[0]
    start = class_profiles(tag.sample_logmels(untrained, noise, labels, data.scale), labels, n)
    rms = lambda a, b: torch.cdist(a, b) / b.shape[1] ** 0.5  # (generated class, real class): RMS difference in nats
    dist, own_start = rms(fake, real), rms(start, real).diag()
    own, other = dist.diag(), (dist + torch.eye(n) * 1e9).min(1).values
    assert (own < 0.6 * other).all(), dist  # measured: own 0.9-1.6 nats, others 3.3 or more
    assert (own < 0.7 * own_start).all(), (own, own_start)  # measured: untrained 3.1-6.0
