"""Where a WGAN-GP step's time goes, per generator architecture: one forward/backward of each part, in ms.

    python bench/step_parts.py            # CPU preset: batch 16, 80 x 64 mels, g_channels 32, d_channels 16

A step is n_critic x (G forward without grad + critic forward/backward on real+fake + gradient penalty) + one
generator step, so these four numbers predict steps per second. Mean of --repeats calls after one warm-up call.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_audio_gan as tag  # noqa: E402


def ms(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--n_frames", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    B = args.batch_size
    print("| generator | G forward, no grad | critic forward + backward (real + fake) | gradient penalty | "
          "generator step | predicted step (n_critic 5) |")
    print("|---|---|---|---|---|---|")
    for arch in ("conv1d", "seed", "conv2d"):
        cfg = tag.Config(n_frames=args.n_frames, g_channels=32, d_channels=16, arch=arch, batch_size=B)
        generator, critic = tag.build_models(cfg, 10)
        z, y, x = torch.randn(B, cfg.latent_dim), torch.randint(10, (B,)), torch.randn(B, 1, cfg.n_mels, cfg.n_frames)

        def fake():
            with torch.no_grad():
                generator(z, y)

        def critic_step():
            critic(torch.cat([x, x]), torch.cat([y, y]))[0].sum().backward()

        def penalty():
            tag.gradient_penalty(critic, x, 0.5 * x, y).backward()

        def generator_step():
            critic.requires_grad_(False)
            critic(generator(z, y), y)[0].sum().backward()
            critic.requires_grad_(True)

        t = [ms(f, args.repeats) for f in (fake, critic_step, penalty, generator_step)]
        print(f"| {arch} | {t[0]:.1f} ms | {t[1]:.1f} ms | {t[2]:.1f} ms | {t[3]:.1f} ms | "
              f"{5 * (t[0] + t[1] + t[2]) + t[3]:.0f} ms |")


if __name__ == "__main__":
    main()
