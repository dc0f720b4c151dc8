"""Audio quality on real spoken digits (FSDD) or another train/test set: train variants for the same budget, score
them alike with evaluator v2, beside the real floor and the vocoder ceiling.

    python bench/quality.py --minutes 15 --variants default --seeds 42,43          # a claim: two seeds at least
    python bench/quality.py --minutes 3 --variants default,conv2d,no_aux            # a quick screen
    python bench/quality.py --data runs/gm_notes --n_frames 144 --minutes 15        # the music set (make_gm_notes.py)
    python bench/quality.py --data runs/drums --n_frames 176 --out runs/drums_judge  # the drum set (make_drums.py)
    python bench/quality.py --steps 3500 --seeds 42,43 --score_only                 # rescore the runs already in --out
    python bench/quality.py --steps 3500 --seeds 42,43 --resume                     # finish the runs that were stopped
    python bench/critic_ideas.py --steps 1250 --variants feature_matching           # ideas patched in from the bench

Trains on DATA/train with a short-clip CPU preset (64 frames = 0.74 s unless --n_frames) and scores against
DATA/test with the script's own Evaluator: one classifier trained once on the real training clips (its cache is
shared by every variant), so every variant is judged by the same judge. Every set is level-normalised and equal in
size: N = all test clips, N training clips in the same class mix for the real floor, the N test clips through
HiFi-GAN for the vocoder ceiling, N generated clips (vocoded and re-analysed: the score is of what a user hears).
Each run stops at --minutes of wall clock (or --steps generator steps, in whole epochs of 250) and is scored with the
generator that sampling uses (the EMA one when there is one). Under --minutes, a recipe whose lr decays over its epochs
(the default) first times 60 steps of itself and plans the epochs that the minutes buy. Prints a markdown table: a row
per run, a mean (min-max) row per variant over its seeds, then the vocoder ceiling and the real floor; Frechet
distances as ratios to the floor and the ceiling; then each class's accuracy beside its vocoder ceiling.
"""
import argparse
import dataclasses
import math
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_audio_gan as tag  # noqa: E402

FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd")
PRESET = dict(n_frames=64, batch_size=16, g_channels=32, d_channels=16, samples_per_class=1, log_every=25,
              vocoder="universal", eval_samples=0, epochs=1000, epoch_steps=250)
# Every variant spells out what it compares, so the table keeps its meaning when the defaults change.
RECIPE = dict(arch="conv1d", critic_arch="conv2d", scaling="affine", g_cond="cbn", critic_cond="projection", mbstd=False,
              aux_weight=1.0,
              augment=False, gp_every=1, n_critic=5, ema=0.999, lr=2e-4, lr_decay=1.0, beta1=0.5, beta2=0.999,
              balance=True, coarse_critic=0)
VARIANTS = {
    "default": {},  # RECIPE as it stands
    "seed": dict(tag.PRESETS["seed"]),  # the original design, trained plainly
    "v1": dict(arch="seed", scaling="affine", g_cond="concat"),  # the previous defaults (ConvTranspose, affine)
    "per_bin": dict(scaling="per_bin"),
    "conv2d": dict(arch="conv2d"),
    "no_cbn": dict(g_cond="concat"),
    "no_aux": dict(aux_weight=0.0),  # the default before issue #18's fourth session: no auxiliary classifier loss
    "aux1": dict(aux_weight=1.0),  # the default since then; kept, so that the commands in RESULTS.md still run
    "aux10": dict(aux_weight=10.0),
    "augment": dict(augment=True),
    "mbstd": dict(mbstd=True),
    "lazy_gp4": dict(gp_every=4),
    "wgan_adam": dict(lr=1e-4, beta1=0.0, beta2=0.9),
    "n_critic2": dict(n_critic=2),
    "critic1d": dict(critic_arch="conv1d"),  # mel bins as channels: each filter sees the whole spectrum
    "critic1d_d32": dict(critic_arch="conv1d", d_channels=32),
    "critic1d_b32": dict(critic_arch="conv1d", batch_size=32),
    "d32": dict(d_channels=32),
    "b32": dict(batch_size=32),
    "critic_both": dict(critic_arch="both"),
    "constant_lr": dict(lr_decay=0.0),  # the default before issue #18's third session: lr 2e-4 to the end
    "decay_half": dict(lr_decay=0.5),  # constant for the first half, then linearly to 0 (pix2pix)
    "b128": dict(batch_size=128),  # the GPU preset's batch at the CPU widths (issue #32: the GPU recipe per step)
    "gpu": {k: tag.SHIPPED[k] for k in (*tag.CPU_SIZES, "lr")},  # the GPU preset's sizes and lr, as shipped
    "w64": dict(g_channels=64, d_channels=64),  # the GPU preset's widths at the CPU batch (issue #32: the other half)
    "w64_lr1e4": dict(g_channels=64, d_channels=64, lr=1e-4),  # the same at half the lr: wider nets, smaller steps
    "b128_lr1e4": dict(batch_size=128, lr=1e-4),  # the GPU preset's batch at half the lr: does the w64 fix cost it?
    "balance": dict(balance=True),  # every class equally often (issue #32: the drum set's 16 kicks); the default since
    "no_balance": dict(balance=False),  # each class as often as it has clips: the default before issue #32's --balance
    "coarse4": dict(coarse_critic=4),  # a second critic on the mel pooled 4x in time (auto: sounds of 2.2 s or more)
    "no_coarse": dict(coarse_critic=1),  # none: the default before issue #32's --coarse_critic, at every length
    "coarse4_aux2": dict(coarse_critic=4, aux_weight=2.0),  # the class's own loss doubled beside the coarse critic
    "coarse2": dict(coarse_critic=2),  # the coarse critic pooled 2x: 1.1 s at once, nearer the full-rate critic's detail
}


def judge(data_root, out, device, n_frames, vocoder="universal"):
    """The shared evaluator and its vocoder: the classifier, the floor and the ceiling depend on no variant's GAN."""
    cfg = tag.Config(base_path=os.path.join(data_root, "train"), eval_path=os.path.join(data_root, "test"),
                     out_dir=out, device=device, scaling="affine",
                     **{**PRESET, "n_frames": n_frames, "vocoder": vocoder})
    device = tag.pick_device(device)
    vocoder = tag.load_vocoder(cfg, device)
    return tag.Evaluator(cfg, tag.MelClips(cfg, device), device, vocoder), vocoder


def run_config(args, name, seed, extra):
    """The training configuration of one variant and seed, budgeted by --minutes or by --steps."""
    out_dir = os.path.join(args.out, f"{name}-{seed}")
    resume = args.resume and os.path.exists(os.path.join(out_dir, "checkpoint.pt"))  # exact: as if never stopped
    # preset "gpu" fills nothing: PRESET spells out every size, and on a CPU "auto" would put the CPU sizes back
    # wherever a variant asks for the shipped ones (batch 128, widths 64), as train(cfg) counts those as unset
    cfg = tag.Config(base_path=os.path.join(args.data, "train"), device=args.device, seed=seed, out_dir=out_dir,
                     overwrite=not (args.score_only or resume), resume=resume,  # else a rerun replaces
                     preset="gpu",
                     **{**PRESET, "n_frames": args.n_frames, "vocoder": args.vocoder,
                        "max_minutes": 0.0 if args.steps else args.minutes, **RECIPE, **VARIANTS[name], **extra})
    if args.steps:  # whole epochs of 250 steps: exactly --steps for a multiple of 250, else rounded up
        per_epoch = min(args.steps, PRESET["epoch_steps"])
        cfg = dataclasses.replace(cfg, epoch_steps=per_epoch, epochs=-(-args.steps // per_epoch))
    return cfg


def trained(cfg, score_only):
    """(generator, scale, classes, steps, minutes): trained now, or with --score_only read from the run's checkpoint."""
    if score_only:
        generator, ckpt, _, scale, _ = tag.load_generator(dataclasses.replace(cfg, mode="evaluate"))
        return generator, scale, ckpt["classes"], ckpt["step"], float("nan")
    if cfg.max_minutes and cfg.lr_decay:  # lr decays over the epochs: plan as many as the minutes buy
        cfg = planned(cfg)
    t0 = time.time()
    result = tag.train(cfg)
    return (result["generator_ema"] or result["generator"], result["scale"], result["classes"], result["steps"],
            (time.time() - t0) / 60)


def planned(cfg, probe_steps=60):
    """cfg with the epochs (of 250 steps) that its --minutes buy, timed by a short run of the same configuration;
    max_minutes still stops it, should the plan run over."""
    rate = tag.train(dataclasses.replace(cfg, epochs=1, epoch_steps=probe_steps, max_minutes=0.0))["steps_per_s"]
    epochs = max(1, round(rate * 60 * cfg.max_minutes / PRESET["epoch_steps"]))
    print(f"{cfg.max_minutes:g} minutes at {rate:.2f} steps/s: {epochs} epochs of {PRESET['epoch_steps']} steps, over "
          f"which lr decays", flush=True)
    return dataclasses.replace(cfg, epochs=epochs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per run (0 = no limit)")
    p.add_argument("--steps", type=int, default=0, help="generator steps per run instead, rounded up to whole "
                   "epochs of 250 (0 = budget by --minutes)")
    p.add_argument("--variants", default="default", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--set", default="", help="extra settings for every variant, e.g. aux_weight=1,augment=true")
    p.add_argument("--seeds", default="42,43", help="comma-separated; a claim needs two at least")
    p.add_argument("--data", default=FSDD, help="a folder with train/<class>/ and test/<class>/ audio")
    p.add_argument("--n_frames", type=int, default=PRESET["n_frames"], help="mel frames per clip (multiple of 16)")
    p.add_argument("--out", default=os.path.join(REPO, "runs", "quality"))
    p.add_argument("--score_only", action="store_true", help="score the checkpoints already in --out, train nothing")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out that were stopped (train the "
                   "others from the start), then score them all; train min counts this session's minutes only")
    p.add_argument("--vocoder", default=PRESET["vocoder"], help='what the audio is heard through, e.g. "bigvgan"')
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.resume and not args.steps:  # --minutes plans a run's epochs by timing it afresh
        raise SystemExit("--resume needs the --steps the runs were started with")
    if not os.path.isdir(os.path.join(args.data, "train")):
        raise SystemExit(f"No dataset at {os.path.normpath(args.data)} (expected train/ and test/ class folders)")
    extra = dict(kv.split("=") for kv in args.set.split(",") if kv)
    extra = {k: type(getattr(tag.Config, k))(v) if not isinstance(getattr(tag.Config, k), bool) else
             tag.str2bool(v) for k, v in extra.items()}
    evaluator, vocoder = judge(args.data, args.out, args.device, args.n_frames, args.vocoder)
    rows = {}
    for name in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            cfg = run_config(args, name, seed, extra)
            generator, scale, classes, steps, minutes = trained(cfg, args.score_only)
            m = evaluator.evaluate(generator, scale, vocoder, steps)
            plot_final(generator, scale, classes, cfg, f"{name}, seed {seed}, {steps} steps")
            rows.setdefault(name, []).append((seed, steps, minutes, m))
            print(row(name, seed, steps, minutes, m, evaluator), flush=True)
    print_table(args, extra, rows, evaluator)


def print_table(args, extra, rows, ev):
    """The markdown table: each run, each variant's mean (min-max) over seeds, the vocoder ceiling, the real floor."""
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} minutes"
    print(f"\n{os.path.basename(os.path.normpath(args.data))}, {args.n_frames} frames, budget {budget} per run, "
          f"{tag.pick_device(args.device)}; N = {ev.floor['n']} clips in every set (generated, test through the "
          f"vocoder, test, train), level-normalised; generated audio vocoded by {args.vocoder} and "
          f"re-analysed; extra settings: {extra or 'none'}")
    print("| variant | seed | steps | train min | accuracy | worst class | IS | Frechet (x floor, x ceiling) | "
          "band Frechet (x floor) | KID (real 0) | diversity (x real) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        for seed, steps, minutes, m in runs:
            print(row(name, seed, steps, minutes, m, ev))
        if len(runs) > 1:
            print(spread_row(name, runs, ev))
    c, f = ev.ceiling, ev.floor
    print(f"| *vocoder ceiling (test clips through {args.vocoder})* | | | | {c['accuracy']:.3f} | "
          f"{min(c['per_class']):.2f} | {c['inception_score']:.2f} | "
          f"{c['frechet']:.2f} ({c['frechet'] / f['frechet']:.2f}x) | "
          f"{c['frechet_mel']:.2f} ({c['frechet_mel'] / f['frechet_mel']:.2f}x) | {c['kid']:.4f} | "
          f"{c['diversity']:.2f} ({c['diversity'] / f['diversity']:.2f}x) |")
    print(f"| *real test clips* | | | | {f['accuracy']:.3f} | {min(f['per_class']):.2f} | {f['inception_score']:.2f} | "
          f"floor {f['frechet']:.2f} | floor {f['frechet_mel']:.2f} | {f['kid']:.4f} | {f['diversity']:.2f} |")
    for name, runs in rows.items():
        print(f"{name}, seed {runs[-1][0]}: {tag.gap_line(runs[-1][3], c, f)}")
    print("\nAccuracy per class (each variant's mean over its seeds): where the vocoder ceiling is low, no GAN scores "
          "high")
    print(f"| class | {' | '.join(rows)} | vocoder ceiling | real |\n|---|{'---|' * (len(rows) + 2)}")
    for i, name in enumerate(ev.classes):
        mean = lambda runs: sum(r[3]["per_class"][i] for r in runs) / len(runs)
        print(f"| {name} | {' | '.join(f'{mean(runs):.2f}' for runs in rows.values())} | "
              f"{c['per_class'][i]:.2f} | {f['per_class'][i]:.2f} |")


def plot_final(generator, scale, classes, cfg, title):
    """The run's last samples as a grid (3 per class, fixed noise): out_dir/final.png, beside real_examples.png."""
    labels = torch.arange(len(classes)).repeat_interleave(3)
    noise = torch.randn(len(labels), cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed))
    device = next(generator.parameters()).device
    logmels = tag.sample_logmels(generator, noise.to(device), labels.to(device), scale).cpu()
    tag.plot_mels(logmels.view(len(classes), 3, *logmels.shape[1:]), classes, os.path.join(cfg.out_dir, "final.png"),
                  cfg, title)


def ratios(m, ev):
    return (f"{m['frechet']:.2f} ({m['frechet'] / ev.floor['frechet']:.1f}x, "
            f"{m['frechet'] / ev.ceiling['frechet']:.1f}x) | "
            f"{m['frechet_mel']:.2f} ({m['frechet_mel'] / ev.floor['frechet_mel']:.1f}x) | {m['kid']:.4f} | "
            f"{m['diversity']:.2f} ({m['diversity'] / ev.floor['diversity']:.2f}x)")


def row(name, seed, steps, minutes, m, ev):
    minutes = f"{minutes:.1f}" if math.isfinite(minutes) else "-"  # --score_only: not timed here
    return (f"| {name} | {seed} | {steps} | {minutes} | {m['accuracy']:.3f} | {min(m['per_class']):.2f} | "
            f"{m['inception_score']:.2f} | {ratios(m, ev)} |")


def spread_row(name, runs, ev):
    """Mean and (min-max) over a variant's seeds, for every column that is a score."""
    cell = lambda key, fmt, scale=1.0: (f"{sum(r[3][key] for r in runs) / len(runs) / scale:{fmt}} "
                                        f"({min(r[3][key] for r in runs) / scale:{fmt}}-"
                                        f"{max(r[3][key] for r in runs) / scale:{fmt}})")
    worst = [min(r[3]["per_class"]) for r in runs]
    return (f"| **{name}, mean (min-max) of {len(runs)} seeds** | | {sum(r[1] for r in runs) / len(runs):.0f} | | "
            f"**{cell('accuracy', '.3f')}** | {min(worst):.2f} | {cell('inception_score', '.2f')} | "
            f"**{cell('frechet', '.1f', ev.floor['frechet'])}x floor** | "
            f"{cell('frechet_mel', '.1f', ev.floor['frechet_mel'])}x floor | {cell('kid', '.4f')} | "
            f"{cell('diversity', '.2f', ev.floor['diversity'])}x real |")


if __name__ == "__main__":
    main()
