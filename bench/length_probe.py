"""Where a trained GAN's effort goes when most of each example is silence (issue #32, item 3): two probes of a checkpoint.

    python bench/length_probe.py runs/f256/old/default-42/checkpoint.pt --sound 0.15   # 256 frames: a digit is ~36
    python bench/length_probe.py runs/gpu_per_step/default-42/checkpoint.pt --sound 0.6 # 64 frames

1. The critic's ear: of the squared gradient of the critic's score with respect to 200 generated mels (20 per class,
   fixed noise), the share that falls on bins within 0.7 nats of silence (-94 dB; below -0.9 in the affine scaling),
   which HiFi-GAN renders as nothing.
2. The generator's BatchNorm: per block, its batch statistics over every time position against those over the first
   --sound of the clip (where the sound is), in training mode on 16 clips: how far silence moves the mean that
   normalises the sound (median over channels, in units of the whole batch's standard deviation).
Neither draws from anything but its own seeded torch RNG; nothing is written.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402


QUIET_NATS = 0.7  # within this of HiFi-GAN's silence (log 1e-5) a bin is -94 dB or less: the vocoder renders nothing


def models(path):
    """(generator, critic, cfg, n_classes, quiet) from a training checkpoint: the raw generator, not the EMA one (the
    critic trained against it); quiet, the GAN-scale level (n_mels, 1) of QUIET_NATS above silence."""
    generator, ckpt, cfg, scale, _ = tag.load_generator(tag.Config(mode="evaluate", checkpoint=path, device="cpu"))
    generator.load_state_dict(ckpt["generator"])
    _, critic = tag.build_models(cfg, len(ckpt["classes"]))
    critic.load_state_dict(ckpt["critic"])
    quiet = scale.to_gan(torch.full((cfg.n_mels, 1), tag.LOG_FLOOR + QUIET_NATS))  # -0.9 in the affine scaling
    return generator, critic, cfg, len(ckpt["classes"]), quiet


def critic_ear(generator, critic, cfg, n_classes, quiet_level):
    """(share of bins near silence, their share of the critic's squared input gradient, mean gradient norm)."""
    labels = torch.arange(n_classes).repeat_interleave(20)
    with tag.training_mode(generator, False), torch.no_grad():
        fake = generator(torch.randn(len(labels), cfg.latent_dim), labels)  # (B, 1, n_mels, T)
    fake.requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(fake, labels)[0].sum(), fake)
    quiet = fake.detach() < quiet_level
    return quiet.float().mean().item(), (grad.pow(2) * quiet).sum().item() / grad.pow(2).sum().item(), \
        grad.flatten(1).norm(dim=1).mean().item()


def batchnorm_offsets(generator, cfg, n_classes, sound):
    """Per UpBlock: (T, median |mean over the sound - mean over all| / std over all) of its BatchNorm's input."""
    seen = []
    hooks = [b.norm.norm.register_forward_hook(lambda m, i, o: seen.append(i[0].detach())) for b in generator.blocks]
    with tag.training_mode(generator, True), torch.no_grad():
        generator(torch.randn(16, cfg.latent_dim), torch.arange(16) % n_classes)
    for h in hooks:
        h.remove()
    rows = []
    for x in seen:  # (B, C, T)
        t = max(1, int(x.shape[-1] * sound))
        offset = (x[..., :t].mean((0, 2)) - x.mean((0, 2))).abs() / x.var((0, 2)).sqrt()
        rows.append((x.shape[-1], offset.median().item()))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--sound", type=float, default=0.15, help="the fraction of the clip, from its start, that sounds")
    args = p.parse_args()
    generator, critic, cfg, n_classes, quiet_level = models(args.checkpoint)
    torch.manual_seed(0)  # after building the models, whose initialisation draws too
    quiet, share, norm = critic_ear(generator, critic, cfg, n_classes, quiet_level)
    print(f"{args.checkpoint}: {cfg.n_frames} frames; bins within {QUIET_NATS} nats of silence {quiet:.3f}, their share of the "
          f"critic's squared input gradient {share:.3f}, gradient norm {norm:.3f}")
    for k, (t, offset) in enumerate(batchnorm_offsets(generator, cfg, n_classes, args.sound)):
        print(f"  generator block {k} ({t} positions): the sound's BatchNorm mean sits {offset:.2f} std from the batch's")


if __name__ == "__main__":
    main()
