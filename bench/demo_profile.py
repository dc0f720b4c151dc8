"""Where the demo's wall clock goes: training steps against each part of the epoch-end work.

    python bench/demo_profile.py                  # the README's first command, in a fresh temporary out_dir
    python bench/demo_profile.py --epochs 2       # any flag of train_audio_gan.py

Wraps the script's functions with timers (nothing else changes) and prints seconds per part, in total and per epoch.
Parts nest: `write_samples` includes `vocode`, `plot_mels`, `write_thumbnails` and `write_wavs`.
"""
import collections
import functools
import os
import sys
import tempfile
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train_audio_gan as tag  # noqa: E402

T_IMPORT = time.perf_counter() - T_START
PARTS = ("make_demo_dataset", "MelClips", "load_vocoder", "check_vocoder", "train_step", "ema_update", "standing_stats",
         "sample_logmels", "write_samples", "vocode", "plot_mels", "write_thumbnails", "write_wavs", "write_losses",
         "write_gallery", "save")


def timed(name, fn, totals, counts):
    """fn, adding its wall time to totals[name]."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t
            counts[name] += 1
    return wrapper


def main():
    argv = sys.argv[1:]
    out = tempfile.mkdtemp(prefix="demo_profile_")
    cfg = tag.parse_config(["--out_dir", out] + argv)
    totals, counts = collections.defaultdict(float), collections.Counter()
    for name in PARTS:
        owner = tag.torch if name == "save" else tag
        setattr(owner, name, timed(name, getattr(owner, name), totals, counts))
    t = time.perf_counter()
    tag.train(cfg)
    run = time.perf_counter() - t
    epochs = max(1, counts["write_samples"])
    end_work = sum(totals[p] for p in ("standing_stats", "sample_logmels", "write_samples", "write_losses",
                                       "write_gallery", "save"))
    print(f"\nout_dir {out}; torch threads {tag.torch.get_num_threads()}")
    print(f"{'part':18s} {'calls':>6s} {'total s':>8s} {'per epoch s':>11s}")
    print(f"{'import':18s} {1:6d} {T_IMPORT:8.2f}")
    for name in PARTS:
        if counts[name]:
            print(f"{name:18s} {counts[name]:6d} {totals[name]:8.2f} {totals[name] / epochs:11.2f}")
    steps = totals["train_step"] + totals["ema_update"]
    print(f"\ntrain() {run:.1f} s = steps {steps:.1f} s ({counts["train_step"] / max(steps, 1e-9):.2f} steps/s) "
          f"+ epoch-end work {end_work:.1f} s ({end_work / epochs:.2f} s/epoch) + setup and other "
          f"{run - steps - end_work:.1f} s; with imports {time.perf_counter() - T_START:.1f} s")


if __name__ == "__main__":
    main()
