"""Critic ideas of issues #18 and #32 that the script does not have, screened with bench/quality.py's protocol and judge.

    python bench/critic_ideas.py --steps 1250 --seeds 42,43 --variants default,feature_matching,freq_dilated

Every argument is quality.py's; --variants may also name the ideas below, each the default recipe plus one change:
- feature_matching, feature_matching100: the generator also matches the mean critic features of real clips, layer
  by layer (Salimans et al. 2016), L1 averaged over elements and layers, weight 10 (MelGAN's) or 100. The real
  features are the last critic step's (its real half, detached).
- freq_dilated: the conv2d critic's first layer is four 3x4 convolutions dilated 1, 2, 4 and 8 bins in frequency
  (c/4 channels each, concatenated), so the first layer spans up to 17 mel bins, several harmonics, where a 4x4
  kernel spans 4. Same output shape, about the same cost.
- cepstral_view (#32): the critic also sees each frame's cepstrum, as a second input channel beside the log-mel: the
  mel spread back over the linear bins below 4 kHz (each bin the weighted mean of the mel bands over it), its log, the
  inverse FFT, the
  quefrencies of pitches 83-500 Hz (80 of them, one per mel bin). Stripes at whole multiples of one pitch make a peak
  there; generated clips' stripes are less so (bench/kid_probe.py's harmonicity), and a 4x4 kernel on the mel cannot
  see it. Differentiable, so the penalty and the generator's gradient pass through it (a pseudo-inverse instead
  drove the penalty to 1e5: its log of near-cancelling sums has no bound on its gradient; weighted means have 1).
- harmonic_head (#32, a generator idea): the generator's output adds, where it chooses (a voicing gain per frame),
  a comb of stripes at whole multiples of a pitch it draws per frame (80-400 Hz), computed on the linear bins below
  4 kHz and averaged into the mel bands, so that its stripes are harmonic by construction (bench/kid_probe.py found
  generated stripes 15 % less harmonic than real ones). About 15 % more generator cost.
- harmonic_grid: the same, the pitch a softmax over 48 log-spaced pitches (80-400 Hz) and the stripes the mix of
  theirs: harmonic_head's pitch did not move from its start (the gradient through a cosine in 1/f0 is no guide).
- band_pool (#32, music): the critic's label projection and auxiliary classifier see each mel band's features
  (summed over time only: 8c x n_mels/16 of them) instead of one sum over the whole plane. Summed over frequency, a
  feature says what is there but not in which band; at 3,500 steps on the music set the default critic's own classifier
  called 34 % of the real training organs and 37 % of the flutes violin (73 % right in all; bench/class_probe.py), and
  the generator's organs were heard as violin and piano. With it: 95 % right, organs 0.40 against 0.27 (one seed).
- time_pyramid (#32, long clips; at 7556f5a): a second critic on the mel average-pooled 4x in time, its score added.
  Now the script's --coarse_critic (quality.py's variants coarse4 and no_coarse), so it is no longer here.
- z_cbn (#32, long clips, a generator idea): every UpBlock's BatchNorm gain and bias also take a linear function of z
  (BigGAN's skip-z, all of z to every block), zero at the start, so the run starts as the default's. What z sets there
  is the same at every frame: a pitch or timbre chosen once per clip. In the default the 22 seed positions of a 4-s
  clip are each the Linear's own function of z, so holding one pitch means the Linear learning 22 consistent maps.
- coarse_uncond (#32, long clips): the coarse critic (--coarse_critic 4) without the label: its score is its Linear
  over its features alone. With the label projected into both critics, 4-s flutes were drawn toward violins (judged on
  the GAN's mels: 24 % flute, seed 43); the coarse critic is there for the pitch held over seconds, which is no class's,
  and the class is left to the full-rate critic, which hears vibrato and breath the 4x pooling averages away.
- coarse_own_gp (#32, long clips): the coarse critic (--coarse_critic 4) with a gradient penalty of its own, as
  MelGAN's discriminators each have their own loss: the script penalises the sum of the two scores, so the two critics
  share one Lipschitz budget and the full-rate critic, the one that projects the label and hears vibrato and breath,
  may get less of it than it had alone. Here each is 1-Lipschitz on its own (the coarse one through the pool) and the
  penalties add (the logged gp is their sum).
They patch the script from here, not the product: what does not win stays out of train_audio_gan.py.
"""
import os
import sys

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402  (bench/quality.py: the protocol, the judge, the table)

tag = quality.tag
FM_WEIGHTS = {"feature_matching": 10.0, "feature_matching100": 100.0}
IDEAS = (*FM_WEIGHTS, "freq_dilated", "cepstral_view", "harmonic_head", "harmonic_grid", "band_pool", "z_cbn",
         "coarse_uncond", "coarse_own_gp")
# an idea's flags beside the default recipe's (the coarse ideas change the coarse critic, so they ask for one)
RECIPES = {"coarse_uncond": dict(coarse_critic=4), "coarse_own_gp": dict(coarse_critic=4)}
active = {"idea": "default"}  # the variant being built: quality.py trains them one at a time


class FeatureMatching(nn.Module):
    """A critic whose generator-step score is lowered by weight * the L1 distance between the fakes' mean features and
    the last critic step's real ones, so the generator's loss (-score) gains that term and nothing else changes."""

    def __init__(self, critic, weight):
        super().__init__()
        self.critic, self.weight, self.real, self.taken = critic, weight, None, []
        for m in critic.features:
            if isinstance(m, nn.LeakyReLU):
                m.register_forward_hook(lambda _m, _i, out: self.taken.append(out))

    def forward(self, mel, labels):
        self.taken.clear()
        score, logits = self.critic(mel, labels)
        if next(self.critic.parameters()).requires_grad:  # a critic step (real then fake) or its penalty
            if not mel.requires_grad:  # the critic step: its first half is real
                self.real = [h[: len(h) // 2].float().mean(0).detach() for h in self.taken]
            return score, logits
        # the generator step: each layer's mean over the batch (C, F, T) against the real one
        fm = sum((h.float().mean(0) - r).abs().mean() for h, r in zip(self.taken, self.real)) / len(self.real)
        return score - self.weight * fm, logits


class FreqDilated(nn.Module):
    """Conv2d(c_in, c, 4, 2, 1)'s replacement: four 3x4 convolutions dilated 1, 2, 4, 8 bins in frequency."""

    def __init__(self, c_in, c):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c // 4, (3, 4), 2, (d, 1), (d, 1)) for d in (1, 2, 4, 8))

    def forward(self, x):
        return torch.cat([conv(x) for conv in self.convs], 1)  # (B, c, n_mels / 2, n_frames / 2)


class CepstralView(nn.Module):
    """A critic fed (mel, its cepstrum) as two channels: its first layer takes 2 input channels instead of 1."""

    def __init__(self, critic, cfg, top_hz=4000.0, first=16, scale=30.0):
        super().__init__()
        fb = tag.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)  # (n_mels, n_freqs)
        n = int(top_hz * cfg.n_fft / cfg.sample_rate)  # linear bins below top_hz
        self.register_buffer("inverse", (fb / fb.sum(0).clamp(min=1e-8)).T[:n])  # (n, n_mels), rows sum to 1 (or 0)
        self.quefrencies, self.scale = slice(first, first + cfg.n_mels), scale  # scale: real cepstra to about unit std
        conv = critic.features[0]
        critic.features[0] = nn.Conv2d(2, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
        self.critic = critic

    def cepstrum(self, mel):  # (B, 1, n_mels, T) in the GAN's scale -> (B, 1, n_mels, T)
        logmel = tag.GanScale().from_gan(mel.float().squeeze(1))
        spectrum = (torch.einsum("fm,bmt->bft", self.inverse, logmel.exp()) + 1e-5).log()  # (B, n, T)
        cepstrum = torch.fft.irfft(spectrum - spectrum.mean(1, keepdim=True), n=2 * len(self.inverse), dim=1)
        return (self.scale * cepstrum[:, self.quefrencies]).unsqueeze(1).to(mel.dtype)

    def forward(self, mel, labels):
        return self.critic(torch.cat([mel, self.cepstrum(mel)], 1), labels)


class BandPooled(tag.Critic):
    """The default Critic whose label projection and classifier take each band's features, pooled over time only."""

    def __init__(self, n_classes, n_mels, n_frames, channels):
        super().__init__(n_classes, n_mels, n_frames, channels)
        self.embed = nn.Embedding(n_classes, self.classify.in_features * (n_mels // 16))
        self.classify = nn.Linear(self.embed.embedding_dim, n_classes)

    def forward(self, mel, labels):
        h = self.features(mel)  # (B, 8c, n_mels / 16, n_frames / 16)
        pooled = h.sum(3).flatten(1)  # (B, 8c * n_mels / 16): what each band holds, summed over time
        score = self.fc(h.flatten(1)).squeeze(1) + (self.embed(labels) * pooled).sum(1)
        return score, self.classify(pooled / h.shape[3])


class UnconditionalCritic(tag.Critic):
    """The default Critic without the label: the score is its Linear over the features, and it has no classifier."""

    def __init__(self, n_mels, n_frames, channels):
        super().__init__(1, n_mels, n_frames, channels)
        del self.embed, self.classify

    def forward(self, mel, labels):
        return self.fc(self.features(mel).flatten(1)).squeeze(1), None  # (B,), no logits


class ZCondNorm(nn.Module):
    """An UpBlock's CondBatchNorm, then a gain 1 + a(z) and a bias b(z) per channel, the same at every frame; a and b
    are Linear maps of z that start at 0. Its `labels` are (labels, z): ZGenerator passes both."""

    def __init__(self, norm, latent_dim, channels):
        super().__init__()
        self.norm, self.gain, self.bias = norm, nn.Linear(latent_dim, channels), nn.Linear(latent_dim, channels)
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, labels_z):
        labels, z = labels_z
        x = self.norm(x, labels)  # (B, C, T)
        return x * (1 + self.gain(z)).unsqueeze(-1) + self.bias(z).unsqueeze(-1)


class ZGenerator(tag.Generator):
    """The default Generator whose UpBlocks' norms also see z (ZCondNorm)."""

    def __init__(self, latent_dim, *args, **kwargs):
        super().__init__(latent_dim, *args, **kwargs)
        for block in self.blocks:
            block.norm = ZCondNorm(block.norm, latent_dim, block.conv[1].out_channels)

    def forward(self, z, labels):
        h = self.fc(torch.cat([z, self.embed(labels)], 1)).view(-1, *self.shape)  # (B, 8c, n_frames / 16)
        for block in self.blocks:
            h = block(h, (labels, z))
        return self.act(self.out(h)).unsqueeze(1)  # (B, 1, n_mels, n_frames)


class HarmonicOut(nn.Module):
    """A Generator's output conv (its `out`) that adds a harmonic comb before the tanh: log(comb + 0.05) nats, times a
    voicing gain of 0-2 per frame, at a pitch of 80-400 Hz per frame; both from a conv on the same features. grid: the
    pitch is a softmax over that many log-spaced pitches, the stripes the mix of theirs (precomputed)."""

    def __init__(self, out, cfg, sharpness=8.0, top_hz=4000.0, grid=0):
        super().__init__()
        self.out, self.sharpness, self.grid = out, sharpness, grid
        self.pitch = nn.Conv1d(out.in_channels, (grid or 1) + 1, 5, padding=2)  # pitch, then voicing
        nn.init.zeros_(self.pitch.weight)
        nn.init.zeros_(self.pitch.bias)
        self.pitch.bias.data[-1] = -2.0  # voicing 0.24 at the start (and 179 Hz, or every pitch of the grid alike)
        fb = tag.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)  # (n_mels, n_freqs)
        n = int(top_hz * cfg.n_fft / cfg.sample_rate)
        self.register_buffer("hz", torch.arange(n) * cfg.sample_rate / cfg.n_fft)
        self.register_buffer("bands", fb[:, :n] / fb[:, :n].sum(1, keepdim=True).clamp(min=1e-8))  # weighted means
        self.register_buffer("share", fb[:, :n].sum(1) / fb.sum(1))  # how much of each band lies below top_hz
        if grid:  # (n_mels, grid): each grid pitch's stripes
            f0 = 80.0 * 5.0 ** torch.linspace(0, 1, grid)
            self.register_buffer("grid_stripes", self.stripes(f0[None]).squeeze(0))

    def stripes(self, f0):
        """(B, n_mels, T) nats <= 0 of combs at pitches f0 (B, T)."""
        comb = ((1 + torch.cos(2 * torch.pi * self.hz[:, None] / f0[:, None, :])) / 2) ** self.sharpness  # (B, n, T)
        return (torch.einsum("mf,bft->bmt", self.bands, comb) + 0.05).log() * self.share[:, None]

    def forward(self, h):  # the last block's features (B, 4c, T) -> pre-tanh mel (B, n_mels, T)
        out = self.pitch(h).float()
        pitch, voicing = out[:, :-1], out[:, -1]  # (B, grid or 1, T), (B, T)
        if self.grid:
            stripes = torch.einsum("mk,bkt->bmt", self.grid_stripes, pitch.softmax(1))
        else:
            stripes = self.stripes(80.0 * 5.0 ** torch.sigmoid(pitch[:, 0]))  # 80-400 Hz
        gain = 2 * torch.sigmoid(voicing)[:, None] * (2.0 / tag.AFFINE_SPAN)  # nats -> the GAN's units
        return self.out(h) + (gain * stripes).to(h.dtype)


base_build_models, base_run_config, base_penalty = tag.build_models, quality.run_config, tag.gradient_penalty


def build_models(cfg, n_classes):
    generator, critic = base_build_models(cfg, n_classes)
    if active["idea"] == "freq_dilated":
        first = critic.features[0]
        critic.features[0] = FreqDilated(first.in_channels, first.out_channels)
    if active["idea"] in ("harmonic_head", "harmonic_grid"):  # the Generator's forward runs as it is
        generator.out = HarmonicOut(generator.out, cfg, grid=48 if active["idea"] == "harmonic_grid" else 0)
    if active["idea"] == "band_pool":
        critic = BandPooled(n_classes, cfg.n_mels, cfg.n_frames, cfg.d_channels)
    if active["idea"] == "z_cbn":
        generator = ZGenerator(cfg.latent_dim, n_classes, cfg.n_mels, cfg.n_frames, cfg.g_channels, cfg.embed_dim,
                               norm_frames=cfg.norm_frames)
    if active["idea"] == "coarse_uncond":
        critic.coarse = UnconditionalCritic(cfg.n_mels, cfg.n_frames // critic.pool, cfg.d_channels)
    if active["idea"] == "cepstral_view":
        critic = CepstralView(critic, cfg)
    if active["idea"] in FM_WEIGHTS:
        critic = FeatureMatching(critic, FM_WEIGHTS[active["idea"]])
    return generator, critic


def gradient_penalty(critic, real, fake, labels):
    """coarse_own_gp: a CoarseCritic's critics penalised each on its own (the coarse one through the pool), summed."""
    if active["idea"] != "coarse_own_gp" or not isinstance(critic, tag.CoarseCritic):
        return base_penalty(critic, real, fake, labels)
    coarse = lambda mel, labels: critic.coarse(F.avg_pool2d(mel, (1, critic.pool)), labels)  # noqa: E731
    return base_penalty(critic.critic, real, fake, labels) + base_penalty(coarse, real, fake, labels)


def run_config(args, name, seed, extra):
    active["idea"] = name
    return base_run_config(args, name, seed, extra)  # an idea's VARIANTS entry is its RECIPES flags (or none)


if __name__ == "__main__":
    tag.build_models, tag.gradient_penalty, quality.run_config = build_models, gradient_penalty, run_config
    quality.VARIANTS.update({name: RECIPES.get(name, {}) for name in IDEAS})
    quality.main()
