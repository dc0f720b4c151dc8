"""What the kernel distance hears in generated clips (issue #32, item 6): where the gap to real clips arises (in the
GAN's mel or at the vocoder), and what differs in the mels themselves.

    python bench/kid_probe.py --data runs/fsdd_data --out runs/fsdd6000 \\
        runs/fsdd6000/default-42/checkpoint.pt runs/fsdd6000/default-43/checkpoint.pt

--data, --n_frames and --out name the judge as bench/quality.py does (copy its mel_cache into --out to reuse it). Each
generator is sampled as quality.py samples it (Evaluator.generated: the EMA weights, the judge's noise). A row per
checkpoint and one for the real held-out clips (the "heard" real ones are the vocoder ceiling):
- KID mel / KID heard: the kernel distance to the real held-out clips of the GAN's own log-mels (compared with the
  real ones as they are) and of what a listener hears (vocoded, analysed again; quality.py's figure). Their
  difference is what the vocoder adds; real clips lose a little there too (the ceiling).
- harmonicity: the cepstral peak of each sounding frame's spectrum below 4 kHz (the mel inverted by the filterbank's
  pseudo-inverse), over its mean, for voice pitches of 80-400 Hz: high when stripes sit at whole multiples of one
  pitch, as a voice's do; lower when they are stripes at no common pitch.
- comb: the rms of the mel's detail across bins (each frame minus its 5-bin moving average, lowest 48 bins, sounding
  frames): how deep the stripes are; "kept" is the heard clip's over the mel's, what survives the vocoder.
- diversity (x real) and |embedding| (x real): the spread of the judge's embeddings within a class, and their size.
- KID z*0.8: heard KID with the noise scaled by 0.8 (BigGAN's truncation), a fidelity-for-diversity trade.
"""
import dataclasses
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import same_judge  # noqa: E402
from quality import tag  # noqa: E402

SOUNDING = -3.0  # nats below the clip's peak (about 26 dB): the frames that hold sound


def harmonicity(logmel, cfg, f0=(80.0, 400.0), top_hz=4000.0):
    """Mean over sounding frames of the cepstral peak (pitches in f0) over the cepstrum's mean, of log-mels
    (N, n_mels, T): how nearly the spectrum's stripes are whole multiples of one pitch."""
    fb = tag.mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)  # (n_mels, n_freqs)
    hz_per_bin = cfg.sample_rate / cfg.n_fft
    n = int(top_hz / hz_per_bin)  # linear bins below top_hz
    x = tag.level(logmel)
    spectrum = torch.einsum("fm,bmt->bft", torch.linalg.pinv(fb), x.exp()).clamp(min=1e-5)[:, :n].log()
    cepstrum = torch.fft.irfft(spectrum - spectrum.mean(1, keepdim=True), n=2 * n, dim=1).abs()[:, :n]
    lo, hi = (round(2 * n * hz_per_bin / f) for f in f0[::-1])  # quefrency index of a stripe spacing f
    peak = cepstrum[:, lo:hi + 1].amax(1) / cepstrum[:, lo:].mean(1)  # (N, T)
    return peak[x.amax(1) > SOUNDING].mean().item()


def comb(logmel, bins=48, width=5):
    """(N, T) rms over the lowest bins of each frame's detail across bins (minus its moving average), and the mask
    of sounding frames."""
    x = tag.level(logmel)
    low = x[:, :bins].transpose(1, 2).reshape(-1, 1, bins)  # (N * T, 1, bins)
    smooth = F.avg_pool1d(F.pad(low, (width // 2, width // 2), mode="replicate"), width, 1)
    detail = (low - smooth).reshape(x.shape[0], x.shape[2], bins)
    return detail.pow(2).mean(-1).sqrt(), x.amax(1) > SOUNDING


def kept(mel, heard):
    """How much of the mel's comb depth the heard clip keeps, over the mel's sounding frames."""
    (a, on), (b, _) = comb(mel), comb(heard)
    return (b[on].mean() / a[on].mean()).item()


def row(ev, name, mel, labels, heard, against, truncated=float("nan")):
    """A markdown row of the probe's figures for log-mels (N, n_mels, T) and their heard versions, their kernel
    distances taken to the real set `against` (one of the evaluator's heard sets)."""
    mel_set, heard_set = ev.heard_set(mel, labels), ev.heard_set(heard, labels)
    m = ev.compare(heard_set, against)
    size = lambda e: e.norm(dim=1).mean().item()
    depth, on = comb(mel)
    return (f"| {name} | {tag.kernel_distance(mel_set[1], against[1]):.4f} | {m['kid']:.4f} | {truncated:.4f} | "
            f"{harmonicity(mel, ev.cfg):.2f} | {harmonicity(heard, ev.cfg):.2f} | {depth[on].mean():.3f} | "
            f"{kept(mel, heard):.2f} | {m['diversity'] / ev.floor['diversity']:.2f} | "
            f"{size(heard_set[1]) / size(ev.held_set[1]):.2f} | {m['accuracy']:.3f} |")


class Truncated(torch.nn.Module):
    """A generator fed its noise scaled by `factor` (BigGAN's truncation trick, in its simplest form)."""

    def __init__(self, generator, factor):
        super().__init__()
        self.generator, self.factor = generator, factor

    def forward(self, z, labels):
        return self.generator(self.factor * z, labels)


def main():
    args, ev, vocoder = same_judge.judge_from_flags(__doc__.split("\n\n")[0])
    print("| clips | KID mel | KID heard | KID z*0.8 | harmonicity mel | heard | comb mel | kept | diversity (x real) "
          "| embedding (x real) | accuracy |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for path, generator, cfg, scale in same_judge.generators(args.checkpoints, ev):
        mel, labels = ev.generated(generator, scale, cfg.latent_dim)
        truncated, _ = ev.generated(Truncated(generator, 0.8), scale, cfg.latent_dim)  # the same noise, x 0.8
        print(row(ev, path, mel, labels, ev.hear(mel, vocoder), ev.held_set,
                  ev.score(truncated, labels, vocoder)["kid"]), flush=True)
    held = tag.MelClips(dataclasses.replace(ev.cfg, base_path=ev.cfg.eval_path), torch.device("cpu"))
    mel = same_judge.real_crops(ev, held)
    # Against the floor's training clips, as the floor (mel) and the vocoder ceiling (heard) are scored.
    print(row(ev, "*real held-out clips (heard: the vocoder ceiling)*", mel, held.labels, ev.hear(mel, vocoder),
              ev.train_set))


if __name__ == "__main__":
    main()
