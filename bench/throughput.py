"""Training throughput of train_audio_gan.py against a plain reference loop, the same models in both.

    python bench/throughput.py                       # demo size, 3 repeats each, on cuda if present else cpu
    python bench/throughput.py --size original --repeats 1 --steps 1

"ours" is the script's own step (train_step): every mel in memory on the device, real and fake batched into one
critic forward, no critic weight gradients in the generator step, losses left on the device. "reference" is how
such a loop is usually written: fp32, a torch DataLoader whose dataset decodes, resamples and transforms the audio
file for every example of every batch, separate critic calls for real and fake, and `.item()` on the losses every
step. Each measurement runs in a fresh subprocess so that peak memory is its own. It prints a JSON line per run
and a summary table with medians.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SIZES = {  # the demo preset and the original design's full size
    "demo": dict(n_frames=64, batch_size=16, g_channels=32, d_channels=16),
    "original": dict(n_frames=512, batch_size=128, g_channels=64, d_channels=64),
}
FSDD = os.path.join(REPO, "..", "shared", "data", "fsdd", "train")


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(size, loop, steps, warmup, device_name, data_dir, out_dir, amp=None):
    """One run: returns a dict of figures. `steps` generator steps (each n_critic critic steps) after `warmup`.
    amp: the script's --amp for "ours" (default auto); the reference is always fp32."""
    import torch
    import train_audio_gan as tag
    sizes = SIZES[size] if isinstance(size, str) else size
    cfg = tag.Config(base_path=data_dir, out_dir=out_dir, device=device_name,
                     amp=(amp or "auto") if loop == "ours" else "off", **sizes)
    device = tag.pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tag.process_state(cfg, device):  # cudnn autotuning, TF32 on Ampere+: as train() runs
        figures = timed(cfg, device, loop, steps, warmup, data_dir)
    return {"size": size, "loop": loop, "amp": str(tag.amp_dtype(cfg, device) or "off"), **figures}


def timed(cfg, device, loop, steps, warmup, data_dir):
    """The figures of one measurement (see measure)."""
    import torch
    import train_audio_gan as tag
    torch.manual_seed(0)
    data = tag.MelClips(cfg, device)  # ours reads the cache built before timing; the reference only its labels
    generator, critic = (m.to(device) for m in tag.build_models(cfg, len(data.classes)))
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(generator.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused and loop == "ours")
    opt_c = torch.optim.Adam(critic.parameters(), cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused and loop == "ours")
    B, data_time, finite = cfg.batch_size, 0.0, None
    if loop == "ours":
        dtype = tag.amp_dtype(cfg, device)
        scalers = [torch.amp.GradScaler(device.type, enabled=dtype == torch.float16) for _ in range(2)]
        counter = iter(range(10 ** 9))
        gan = tag.Gan(generator, critic, opt_g, opt_c, *scalers, dtype)
        step = lambda: tag.train_step(gan, data, cfg, next(counter))
        for _ in range(warmup):  # cudnn autotuning, the allocator's first growth
            step()
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            losses = step()
            if (i + 1) % cfg.log_every == 0:
                losses.tolist()  # the script reads losses once per log interval
        finite = all(map(math.isfinite, losses.tolist()))
        sync(device)
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()  # the data path alone: what a step spends outside the models
        for _ in range(steps * (cfg.n_critic + 1)):
            data.crops(data.sample(B))
        sync(device)
        data_time = time.perf_counter() - t1
    else:
        _, files, _ = tag.discover(data_dir)
        mel = tag.MelSpectrogram(cfg)
        floor = data.silence.view(-1, 1)  # the same scaling (its statistics) as ours

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(files)

            def __getitem__(self, i):
                path, label = files[i]
                wav = torch.from_numpy(tag.load_audio(path, cfg.sample_rate))
                with torch.no_grad():
                    m = data.scale.to_gan(mel(wav[None])[0]).clamp(-1, 1)
                x = floor.repeat(1, cfg.n_frames)
                start = torch.randint(max(1, m.shape[1] - cfg.n_frames + 1), ()).item()
                crop = m[:, start:start + cfg.n_frames]
                x[:, :crop.shape[1]] = crop
                return x[None], label

        loader = torch.utils.data.DataLoader(Files(), batch_size=B, shuffle=True, drop_last=True)

        def batches():
            while True:
                yield from loader

        it = batches()

        def step():
            nonlocal data_time
            for _ in range(cfg.n_critic):
                t = time.perf_counter()
                real, labels = next(it)
                data_time += time.perf_counter() - t
                real, labels = real.to(device), labels.to(device)
                with torch.no_grad():
                    fake = generator(torch.randn(B, cfg.latent_dim, device=device), labels)
                wdist = critic(real, labels)[0].mean() - critic(fake, labels)[0].mean()
                gp = tag.gradient_penalty(critic, real, fake, labels)
                loss_c = cfg.lambda_gp * gp - wdist
                opt_c.zero_grad()
                loss_c.backward()
                opt_c.step()
                loss_c.item(), wdist.item(), gp.item()
            t = time.perf_counter()
            _, labels = next(it)
            data_time += time.perf_counter() - t
            labels = labels.to(device)
            loss_g = -critic(generator(torch.randn(B, cfg.latent_dim, device=device), labels), labels)[0].mean()
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
            loss_g.item()

        for _ in range(warmup):
            step()
        sync(device)
        data_time = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "steps": steps, "finite": finite, "gen_steps_per_s": steps / elapsed,
            "critic_samples_per_s": steps * cfg.n_critic * B / elapsed, "outside_share": data_time / elapsed,
            "peak_mem_gib": peak / 2 ** 30, "peak_kind": "cuda allocated" if device.type == "cuda" else "process RSS"}


def vocode_share(data_dir, out_dir, device_name):
    """Seconds to vocode one epoch's fixed-noise samples (samples_per_class x classes) with HiFi-GAN."""
    import torch
    import train_audio_gan as tag
    cfg = tag.Config(base_path=data_dir, out_dir=out_dir, device=device_name, **SIZES["demo"])
    device = tag.pick_device(cfg.device)
    vocoder = tag.load_vocoder(cfg, device)
    n_classes = len(tag.discover(data_dir)[0])
    logmel = torch.full((n_classes * cfg.samples_per_class, cfg.n_mels, cfg.n_frames), -6.0, device=device)
    tag.vocode(logmel[:1], vocoder, cfg)
    t = time.perf_counter()
    tag.vocode(logmel, vocoder, cfg)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="demo")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed generator steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed generator steps first (0: skip, e.g. CPU at full size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default=FSDD if os.path.isdir(FSDD) else "demo",
                   help="class-folder dataset (default: FSDD train when present, else the synthetic demo)")
    p.add_argument("--one", nargs=2, metavar=("LOOP", "OUT_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    import train_audio_gan as tag
    if args.one:
        print(json.dumps(measure(args.size, args.one[0], args.steps, args.warmup, args.device, args.data, args.one[1])))
        return
    with tempfile.TemporaryDirectory() as out:
        data = args.data
        if data == "demo":
            data = tag.make_demo_dataset(os.path.join(out, "demo_data"), 22050)
        import torch
        tag.MelClips(tag.Config(base_path=data, out_dir=out, **SIZES[args.size]), torch.device("cpu"))  # cache
        runs = []
        for _ in range(args.repeats):
            for loop in ("ours", "reference"):  # interleaved, so drift in machine load hits both alike
                cmd = [sys.executable, __file__, "--size", args.size, "--steps", str(args.steps), "--warmup",
                       str(args.warmup), "--device",
                       args.device, "--data", data, "--one", loop, out]
                line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                runs.append(json.loads(line))
                print(line, flush=True)
        voc = vocode_share(data, out, args.device)
    med = lambda loop, k: statistics.median(r[k] for r in runs if r["loop"] == loop)
    print(f"\n{args.size} size on {runs[0]['device']} ({runs[0]['threads']} threads), data {args.data}, "
          f"median of {args.repeats} runs of {args.steps} generator steps:")
    print("| loop | generator steps/s | critic samples/s | time outside the models | peak memory (GiB) |")
    print("|---|---|---|---|---|")
    for loop in ("ours", "reference"):
        print(f"| {loop} | {med(loop, 'gen_steps_per_s'):.3f} | {med(loop, 'critic_samples_per_s'):.1f} | "
              f"{100 * med(loop, 'outside_share'):.1f}% | {med(loop, 'peak_mem_gib'):.2f} ({runs[0]['peak_kind']}) |")
    print(f"speed-up (ours / reference, median): {med('ours', 'gen_steps_per_s') / med('reference', 'gen_steps_per_s'):.2f}x")
    print(f"vocoding one epoch's demo-size samples with HiFi-GAN: {voc:.2f} s")


if __name__ == "__main__":
    main()
