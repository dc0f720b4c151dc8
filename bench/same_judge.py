"""Score trained generators on one judge, at one clip length: clips shorter than the judge's padded with HiFi-GAN's
silence. Two clip lengths' figures from their own judges differ by the judges as well; here only the generators do.

    python bench/same_judge.py --data runs/fsdd_data --n_frames 256 --out runs/f256/seednorm \\
        runs/gpu_per_step/default-42/checkpoint.pt runs/f256/seednorm/default-42/checkpoint.pt

--data, --n_frames and --out name the judge as bench/quality.py does (copy its mel_cache into --out to reuse it). Each
generator is sampled as quality.py samples it (the EMA one when there is one; Evaluator.generated: the judge's noise,
as many clips per class as are held out).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402
from quality import tag  # noqa: E402


def padded(logmel, n_frames):
    """logmel (N, n_mels, T) with silence after it to n_frames; a longer one is refused."""
    if logmel.shape[-1] > n_frames:
        sys.exit(f"generated clips have {logmel.shape[-1]} frames, more than the judge's {n_frames}")
    return torch.nn.functional.pad(logmel, (0, n_frames - logmel.shape[-1]), value=tag.LOG_FLOOR)


def judge_from_flags(description, more_flags=lambda p: None):
    """(flags, evaluator, vocoder): checkpoints and the judge named by --data, --n_frames and --out, as quality.py
    names it; more_flags(parser) adds a caller's own."""
    p = argparse.ArgumentParser(description=description)
    more_flags(p)
    p.add_argument("checkpoints", nargs="+", help="checkpoint.pt files of runs on the judge's classes")
    p.add_argument("--data", default=os.path.join(quality.REPO, "..", "shared", "data", "fsdd"))
    p.add_argument("--n_frames", type=int, default=64, help="the judge's clip length")
    p.add_argument("--out", default=os.path.join(quality.REPO, "runs", "quality"), help="the judge's caches")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    return (args, *quality.judge(args.data, args.out, args.device, args.n_frames))


def generators(paths, evaluator):
    """(path, generator on the judge's device, its config, its GanScale) of each checkpoint; one of other classes than
    the judge's is refused."""
    for path in paths:
        generator, ckpt, cfg, scale, _ = tag.load_generator(tag.Config(mode="evaluate", checkpoint=path,
                                                                        device=str(evaluator.device)))
        if list(ckpt["classes"]) != list(evaluator.classes):
            sys.exit(f"{path}: classes {ckpt['classes']} are not the judge's {evaluator.classes}")
        yield path, generator.to(evaluator.device), cfg, scale


def real_crops(evaluator, clips):
    """clips' log-mels (N, n_mels, T) on the judge's device, one crop each, drawn as Evaluator.__init__ draws its real
    held-out crops (seed 0, training's RNG untouched): the clips its floor and vocoder ceiling were scored on."""
    with tag.own_rng(evaluator.device):
        torch.manual_seed(0)
        return clips.logmels(torch.arange(len(clips))).to(evaluator.device)


def main():
    args, evaluator, vocoder = judge_from_flags(__doc__.split("\n\n")[0])
    f = evaluator.floor
    print("| checkpoint | frames | accuracy | worst class | Frechet (x floor) | KID (real 0) |\n|---|---|---|---|---|---|")
    for path, generator, cfg, scale in generators(args.checkpoints, evaluator):
        logmel, labels = evaluator.generated(generator, scale, cfg.latent_dim)
        m = evaluator.score(padded(logmel, args.n_frames), labels, vocoder)
        print(f"| {path} | {logmel.shape[-1]} | {m['accuracy']:.3f} | {min(m['per_class']):.2f} | "
              f"{m['frechet']:.2f} ({m['frechet'] / f['frechet']:.2f}x) | {m['kid']:.4f} |", flush=True)
    print(f"| *real test clips* | {args.n_frames} | {f['accuracy']:.3f} | {min(f['per_class']):.2f} | "
          f"floor {f['frechet']:.2f} | {f['kid']:.4f} |")


if __name__ == "__main__":
    main()
