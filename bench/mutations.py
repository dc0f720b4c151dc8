"""Mutation score of the core tests: does `pytest -m core` catch a broken GAN?

Each mutation is one small change to train_audio_gan.py's source (a sign, a dropped term, a shared random draw, ...),
the kind of slip that still trains and still writes plausible files. For each, a copy of the script with that one
change and the tests beside it runs `python -m pytest -q -x -m core tests`; the mutation is caught when that fails.
The unmutated script runs first and must pass. Usage (about 30 s a mutation on one core):

    OMP_NUM_THREADS=1 python bench/mutations.py [--only NAME ...] [-k PYTEST_K_EXPRESSION]

tests/test_core.py checks that every `old` text below still occurs exactly once, so the list cannot rot unnoticed.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_audio_gan.py")

# (name, the source text, what it becomes). Each `old` must occur exactly once in the script.
MUTATIONS = [
    ("generator loss sign",
     "loss_g = cfg.aux_weight * F.cross_entropy(logits.float(), labels) - critic_out.float().mean()",
     "loss_g = cfg.aux_weight * F.cross_entropy(logits.float(), labels) + critic_out.float().mean()"),
    ("critic loss sign",
     "loss = cfg.aux_weight * F.cross_entropy(logits[:B].float(), labels) - wdist",
     "loss = cfg.aux_weight * F.cross_entropy(logits[:B].float(), labels) + wdist"),
    ("wdist sign",
     "wdist = critic_out[:B].float().mean() - critic_out[B:].float().mean()",
     "wdist = critic_out[B:].float().mean() - critic_out[:B].float().mean()"),
    ("fakes not detached in the critic step",
     "with torch.no_grad(), torch.autocast(device.type, dtype=gan.dtype, enabled=gan.dtype is not None):",
     "with torch.autocast(device.type, dtype=gan.dtype, enabled=gan.dtype is not None):"),
    ("penalty weight 0",
     "return loss + cfg.gp_every * cfg.lambda_gp * gp, wdist, gp",
     "return loss + 0 * cfg.lambda_gp * gp, wdist, gp"),
    ("penalty at reals, not interpolates",
     "x = (eps * real.float() + (1 - eps) * fake.float()).requires_grad_(True)",
     "x = real.float().clone().requires_grad_(True)"),
    ("one eps shared by the batch",
     "eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device)",
     "eps = torch.rand(1, *[1] * (real.dim() - 1), device=real.device)"),
    ("penalty without the -1 (gradient norm to 0)",
     "return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()",
     "return (grad.flatten(1).norm(dim=1) ** 2).mean()"),
    ("EMA decay ignored in the update",
     "list(model.parameters()), 1 - decay)",
     "list(model.parameters()), 1.0)"),
    ("EMA decay ignored in the loop",
     "min(cfg.ema, (1 + run.step) / (10 + run.step))",
     "(1 + run.step) / (10 + run.step)"),
    ("n_critic ignored",
     "for i in range(cfg.n_critic):",
     "for i in range(1):"),
    ("labels shuffled in the critic",
     "critic(torch.cat([real, fake]), torch.cat([labels, labels]))",
     "critic(torch.cat([real, fake]), torch.cat([labels, labels])[torch.randperm(2 * B, device=labels.device)])"),
    ("inverse scaling skipped before vocoding",
     "return scale.from_gan(generator(noise, labels)).squeeze(1)",
     "return generator(noise, labels).squeeze(1)"),
    ("the generator step also steps the critic (its stale gradients)",
     "    scaler_g.step(opt_g)\n",
     "    scaler_g.step(opt_g)\n"
     "    [p.data.add_(p.grad, alpha=-1e-3) for p in bare_critic.parameters() if p.grad is not None]\n"),
    ("critic left frozen after the generator step",
     "    bare_critic.requires_grad_(True)\n",
     "\n"),
    ("auxiliary classifier term dropped from the generator loss",
     "loss_g = cfg.aux_weight * F.cross_entropy(logits.float(), labels) - critic_out.float().mean()",
     "loss_g = 0 * F.cross_entropy(logits.float(), labels) - critic_out.float().mean()"),
    ("class term's sign in the critic loss",
     "loss = cfg.aux_weight * F.cross_entropy(logits[:B].float(), labels) - wdist",
     "loss = -cfg.aux_weight * F.cross_entropy(logits[:B].float(), labels) - wdist"),
    ("lr decay rising instead of falling",
     "max(0.0, 1 - progress)",
     "max(0.0, progress)"),
    ("fakes generated for other labels in the critic step",
     "fake = bare_generator(torch.randn(B, cfg.latent_dim, device=device), labels).float()",
     "fake = bare_generator(torch.randn(B, cfg.latent_dim, device=device), labels.flip(0)).float()"),
    ("BatchNorm statistics over the silence after the clips, not the sound",
     "lead = x[..., :keep]",
     "lead = x[..., -keep:]"),
    ("norm_frames ignored: BatchNorm statistics over every frame",
     "if not self.training or keep >= x.shape[-1]:",
     "if True:"),
    ("the generator's seed normalised per feature after the clips too",
     "norm = nn.BatchNorm1d(math.prod(shape)) if frames >= of else SeedBatchNorm(shape, frames, of)",
     "norm = nn.BatchNorm1d(math.prod(shape))"),
]


def mutate(source, old, new):
    if source.count(old) != 1:
        raise SystemExit(f"the mutation's source text occurs {source.count(old)} times, not once: {old!r}")
    return source.replace(old, new)


def run_core(script_text, timeout, select=None):
    """(exit code, seconds, the last line of output) of the core tests against script_text, in a scratch copy."""
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "train_audio_gan.py"), "w") as f:
            f.write(script_text)
        for folder in ("tests", "bench"):  # some test modules import bench/'s scripts at collection
            shutil.copytree(os.path.join(ROOT, folder), os.path.join(tmp, folder),
                            ignore=shutil.ignore_patterns("__pycache__"))
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "core", "-p", "no:cacheprovider",
                                "tests", *(["-k", select] if select else [])],
                               cwd=tmp, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.time() - t0, ""
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        failed = [l.split(" - ")[0].replace("FAILED ", "") for l in lines if l.startswith(("FAILED", "ERROR"))]
        return p.returncode, time.time() - t0, (failed[0] if failed else lines[-1] if lines else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="run only the mutations whose name contains one of these")
    ap.add_argument("-k", dest="select", help="only the core tests that pytest's -k selects, e.g. -k short_run")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run of the core tests")
    args = ap.parse_args()
    source = open(SCRIPT).read()
    for _, old, new in MUTATIONS:
        mutate(source, old, new)  # every mutation applies, before any time is spent
    code, took, last = run_core(source, args.timeout, args.select)
    print(f"unmutated script: exit {code} in {took:.0f} s ({last})")
    if code != 0:
        raise SystemExit("the core tests fail on the unmutated script: fix that first")
    chosen = [m for m in MUTATIONS if not args.only or any(o in m[0] for o in args.only)]
    print("| mutation | caught | by | seconds |\n|---|---|---|---|")
    caught = 0
    for name, old, new in chosen:
        code, took, by = run_core(mutate(source, old, new), args.timeout, args.select)
        caught += code != 0
        print(f"| {name} | {'yes' if code != 0 else '**no**'} | {by if code != 0 else ''} | {took:.0f} |", flush=True)
    print(f"\ncaught {caught}/{len(chosen)}")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
