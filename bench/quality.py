"""Audio quality on real spoken digits (FSDD): train variants for the same wall-clock budget, score them alike.

    python bench/quality.py --minutes 15 --variants default,seed --seeds 42,43   # the finalists' comparison
    python bench/quality.py --minutes 3 --variants default,conv2d,aux1            # a quick screen
    python bench/quality.py --data runs/notes --minutes 15 --variants default     # another dataset (train/ test/)

Trains on DATA/train with a short-clip CPU preset (64 frames = 0.74 s) and scores against DATA/test with the
script's own Evaluator: one classifier trained once on the real training clips (its cache is shared by every
variant), so every variant is judged by the same judge. The generated mels are vocoded with HiFi-GAN and re-analysed
first, so the score is of what a user hears. Each run stops at --minutes of wall clock (or --steps generator steps)
and is scored with the generator that sampling uses (the EMA one when there is one). Prints a markdown table with
the real data's floors beside it; Frechet distances and diversity are also given as ratios to those floors.
"""
import argparse
import dataclasses
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_audio_gan as tag  # noqa: E402

FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd")
PRESET = dict(n_frames=64, batch_size=16, g_channels=32, d_channels=16, samples_per_class=1, log_every=25,
              vocoder="universal", eval_samples=20, epochs=1000, epoch_steps=250)
# Every variant spells out what it compares, so the table keeps its meaning when the defaults change.
RECIPE = dict(arch="conv1d", scaling="affine", g_cond="cbn", critic_cond="projection", mbstd=False, aux_weight=0.0,
              augment=False, gp_every=1, n_critic=5, ema=0.999, lr=2e-4, beta1=0.5, beta2=0.999)
VARIANTS = {
    "default": {},  # RECIPE as it stands
    "seed": {"arch": "seed", **{k: v for k, (_, v) in tag.SEED_PRESET.items()}},  # the original design, trained plainly
    "v1": dict(arch="seed", scaling="affine", g_cond="concat"),  # the previous defaults (ConvTranspose, affine)
    "per_bin": dict(scaling="per_bin"),
    "conv2d": dict(arch="conv2d"),
    "no_cbn": dict(g_cond="concat"),
    "aux1": dict(aux_weight=1.0),
    "aux10": dict(aux_weight=10.0),
    "augment": dict(augment=True),
    "mbstd": dict(mbstd=True),
    "lazy_gp4": dict(gp_every=4),
    "wgan_adam": dict(lr=1e-4, beta1=0.0, beta2=0.9),
    "n_critic2": dict(n_critic=2),
}


def judge(data_root, out, device):
    """The shared evaluator: its classifier and real floors do not depend on any variant's GAN scaling."""
    cfg = tag.Config(base_path=os.path.join(data_root, "train"), eval_path=os.path.join(data_root, "test"),
                     out_dir=out, device=device, scaling="affine", **PRESET)
    return tag.Evaluator(cfg, tag.MelClips(cfg, tag.pick_device(device)), tag.pick_device(device))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per run (0 = no limit)")
    p.add_argument("--steps", type=int, default=0, help="generator steps per run instead (0 = budget by --minutes)")
    p.add_argument("--variants", default="default,seed", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--set", default="", help="extra settings for every variant, e.g. aux_weight=1,augment=true")
    p.add_argument("--seeds", default="42")
    p.add_argument("--data", default=FSDD, help="a folder with train/<class>/ and test/<class>/ audio")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if not os.path.isdir(os.path.join(args.data, "train")):
        raise SystemExit(f"No dataset at {os.path.normpath(args.data)} (expected train/ and test/ class folders)")
    extra = dict(kv.split("=") for kv in args.set.split(",") if kv)
    extra = {k: type(getattr(tag.Config, k))(v) if not isinstance(getattr(tag.Config, k), bool) else
             tag.str2bool(v) for k, v in extra.items()}
    evaluator = judge(args.data, args.out, args.device)
    rows = []
    for name in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            budget = dict(epochs=-(-args.steps // PRESET["epoch_steps"]), max_minutes=0.0) if args.steps else \
                dict(max_minutes=args.minutes)
            cfg = tag.Config(base_path=os.path.join(args.data, "train"), device=args.device, seed=seed,
                             out_dir=os.path.join(args.out, f"{name}-{seed}"), **{**PRESET, **budget},
                             **{**RECIPE, **VARIANTS[name], **extra})
            if args.steps:  # exactly --steps: the last epoch may be shorter
                cfg = dataclasses.replace(cfg, epoch_steps=min(args.steps, PRESET["epoch_steps"]),
                                          epochs=-(-args.steps // min(args.steps, PRESET["epoch_steps"])))
            t0 = time.time()
            result = tag.train(cfg)
            minutes = (time.time() - t0) / 60
            steps = result["steps"]
            generator = result["generator_ema"] or result["generator"]
            vocoder = tag.load_vocoder(cfg, evaluator.device)
            m = evaluator.evaluate(generator, result["scale"], vocoder, steps)
            plot_final(generator, result, cfg, f"{name}, seed {seed}, {steps} steps, {minutes:.1f} min")
            rows.append((name, seed, steps, minutes, m))
            print(row(*rows[-1], evaluator.reference), flush=True)
    ref = evaluator.reference
    print(f"\n{os.path.basename(os.path.normpath(args.data))}, budget "
          f"{f'{args.steps} steps' if args.steps else f'{args.minutes:g} minutes'} per run, "
          f"{tag.pick_device(args.device)}; {PRESET['eval_samples']} clips per class, vocoded by HiFi-GAN (universal) "
          f"and re-analysed; extra settings: {extra or 'none'}")
    print("| variant | seed | steps | train min | accuracy | worst class | IS | Frechet (x floor) | "
          "band Frechet (x floor) | diversity (x real) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(row(*r, ref))
    print(f"| real test clips | | | | {ref['accuracy']:.3f} | {min(ref['per_class']):.2f} | "
          f"{ref['inception_score']:.2f} | floor {ref['frechet']:.1f} | floor {ref['frechet_mel']:.1f} | "
          f"{ref['diversity']:.2f} |")


def plot_final(generator, result, cfg, title):
    """The run's last samples as a grid (3 per class, fixed noise): out_dir/final.png, beside real_examples.png."""
    labels = torch.arange(len(result["classes"])).repeat_interleave(3)
    noise = torch.randn(len(labels), cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
    device = next(generator.parameters()).device
    logmels = tag.sample_logmels(generator, noise.to(device), labels.to(device), result["scale"]).cpu()
    grid = logmels.view(len(result["classes"]), 3, *logmels.shape[1:])
    tag.plot_mels(grid, result["classes"], os.path.join(cfg.out_dir, "final.png"), cfg, title)


def row(name, seed, steps, minutes, m, ref):
    return (f"| {name} | {seed} | {steps} | {minutes:.1f} | {m['accuracy']:.3f} | {min(m['per_class']):.2f} | "
            f"{m['inception_score']:.2f} | {m['frechet']:.1f} ({m['frechet'] / ref['frechet']:.1f}x) | "
            f"{m['frechet_mel']:.1f} ({m['frechet_mel'] / ref['frechet_mel']:.1f}x) | "
            f"{m['diversity']:.2f} ({m['diversity'] / ref['diversity']:.2f}x) |")


if __name__ == "__main__":
    main()
