"""Generator and critic shapes, label conditioning, and the gradient penalty."""
import pytest
import torch
import torch.nn as nn

from conftest import tag


@pytest.mark.parametrize("n_mels,n_frames", [(80, 64), (32, 128), (80, 512), (16, 16)])
def test_shapes(n_mels, n_frames):
    g = tag.Generator(latent_dim=10, n_classes=3, n_mels=n_mels, n_frames=n_frames, channels=4, embed_dim=5)
    labels = torch.tensor([0, 1, 2])
    x = g(torch.randn(3, 10), labels)
    assert x.shape == (3, 1, n_mels, n_frames)
    for conditioning in ("concat", "projection"):
        c = tag.Critic(n_classes=3, n_mels=n_mels, n_frames=n_frames, channels=4, conditioning=conditioning)
        assert c(x, labels).shape == (3,)


@pytest.mark.parametrize("out_act,check", [("tanh", lambda x: x.abs().max() <= 1), ("relu", lambda x: x.min() >= 0)])
def test_output_activation(out_act, check):
    g = tag.Generator(10, 2, 16, 16, channels=4, out_act=out_act)
    assert check(g(torch.randn(8, 10), torch.randint(2, (8,))))


@pytest.mark.parametrize("conditioning", ["concat", "projection"])
def test_label_changes_outputs(conditioning):
    torch.manual_seed(0)
    g = tag.Generator(10, 3, 16, 32, channels=4).eval()
    c = tag.Critic(3, 16, 32, channels=4, conditioning=conditioning)
    z = torch.randn(1, 10).repeat(2, 1)
    labels = torch.tensor([0, 2])
    x = g(z, labels)
    assert not torch.allclose(x[0], x[1])
    mel = torch.randn(1, 1, 16, 32).repeat(2, 1, 1, 1)
    s = c(mel, labels)
    assert not torch.allclose(s[0], s[1])


def test_config_rejects_sizes_the_models_cannot_take():
    with pytest.raises(SystemExit, match="n_frames=100"):
        tag.check_config(tag.Config(n_frames=100))
    with pytest.raises(SystemExit, match="scaling"):
        tag.check_config(tag.Config(scaling="db"))
    with pytest.raises(SystemExit, match="batch_size=1 is too small"):  # BatchNorm would fail mid-training
        tag.check_config(tag.Config(batch_size=1))


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w everywhere, so the penalty is exactly (||w|| - 1)^2."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape))
        self.b = nn.Parameter(torch.randn(()))

    def forward(self, x, labels):
        return (x * self.w).flatten(1).sum(1) + self.b


def test_gradient_penalty_exact_on_linear_critic():
    torch.manual_seed(0)
    critic = LinearCritic((1, 8, 16))
    real, fake = torch.randn(5, 1, 8, 16), torch.randn(5, 1, 8, 16)
    gp = tag.gradient_penalty(critic, real, fake, torch.zeros(5, dtype=torch.long))
    expected = (critic.w.norm() - 1) ** 2
    assert torch.allclose(gp, expected, rtol=1e-5)
    gp.backward()  # the penalty is differentiable in the critic's weights (double backward)
    assert torch.allclose(critic.w.grad, 2 * (critic.w.norm() - 1) * critic.w / critic.w.norm(), rtol=1e-4)


def test_gradient_penalty_draws_one_eps_per_sample(monkeypatch):
    shapes, rand = [], torch.rand
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: shapes.append(size) or rand(*size, **kw))
    tag.gradient_penalty(LinearCritic((1, 4, 4)), torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4), None)
    assert shapes == [(6, 1, 1, 1)]  # not one eps for the whole batch, not one per element


def test_gradient_penalty_interpolates_with_fresh_eps():
    # A critic that is quadratic in x has an input gradient that depends on where it is evaluated, so the penalty
    # changes with eps: two calls from different RNG states give different values.
    critic = lambda x, labels: (x ** 2).flatten(1).sum(1)
    real, fake = torch.ones(4, 1, 4, 4), -torch.ones(4, 1, 4, 4)
    torch.manual_seed(1)
    a = tag.gradient_penalty(critic, real, fake, None)
    torch.manual_seed(2)
    b = tag.gradient_penalty(critic, real, fake, None)
    assert not torch.allclose(a, b)


def test_standing_stats_fit_batchnorm_to_averaged_weights():
    torch.manual_seed(0)
    g = tag.Generator(10, 3, 16, 16, channels=4).eval()
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
