"""Mixed precision and DistributedDataParallel (2 CPU processes, gloo), as far as a CPU can test them."""
import functools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from conftest import tag, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(tiny_dataset, tmp_path, amp):
    # 32 frames, not 16: oneDNN 3.12's bf16 convolution (torch 2.13 on CPUs with AMX) returns wrong values, then NaN,
    # when an output is one column wide, as the critic's last layer is at 16 frames. No run trains below 32 on a CPU.
    result = tag.train(tiny_config(tiny_dataset, tmp_path / amp, amp=amp, epochs=2, n_frames=32))
    assert torch.isfinite(torch.tensor([result["history"][m] for m in tag.METRICS])).all()
    ckpt = torch.load(tmp_path / amp / "checkpoint.pt", weights_only=True)
    assert bool(ckpt["scalers"][0]) == (amp == "fp16")  # fp16 needs and saves a gradient scaler; bf16 does not
    tag.train(tiny_config(tiny_dataset, tmp_path / amp, amp=amp, epochs=3, n_frames=32, resume=True))


def test_amp_auto_is_off_on_cpu():
    assert tag.amp_dtype(tag.Config(), torch.device("cpu")) is None
    assert tag.amp_dtype(tag.Config(amp="bf16"), torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize("capability, dtype", [((6, 0), torch.float16), ((7, 5), torch.float16),
                                               ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_amp_auto_picks_bf16_by_the_training_devices_compute_capability(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation: must not decide
    assert tag.amp_dtype(tag.Config(), torch.device("cuda", 1)) is dtype  # P100, T4: fp16; A100, H100: bf16
    assert asked == [torch.device("cuda", 1)]  # the training device's, not the current device's


def poison_gradient_penalty(monkeypatch, value, steps):
    """Multiply the penalty by value at the given (1-based) calls: one call per step with n_critic=1."""
    calls, real_gp = [], tag.gradient_penalty
    monkeypatch.setattr(tag, "gradient_penalty", lambda *a: calls.append(1) or (
        real_gp(*a) * value if len(calls) in steps else real_gp(*a)))


def test_fp16_overflow_that_the_scaler_skips_does_not_stop_training(tiny_dataset, tmp_path, monkeypatch, capsys):
    cfg = lambda out: tiny_config(tiny_dataset, tmp_path / out, amp="fp16", epoch_steps=4, n_critic=1, log_every=2)
    # A small initial scale, so that no overflow but the injected one happens (the default 2**16 overflows by itself).
    monkeypatch.setattr(torch.amp.GradScaler, "__init__",
                        functools.partialmethod(torch.amp.GradScaler.__init__, init_scale=16.0))
    tag.train(cfg("clean"))
    poison_gradient_penalty(monkeypatch, float("inf"), {2})
    result = tag.train(cfg("overflow"))
    assert result["steps"] == 4 and not result["interrupted"]
    assert "fp16 overflow in the 2 steps to step 2" in capsys.readouterr().out
    clean, ckpt = (torch.load(tmp_path / out / "checkpoint.pt", weights_only=True) for out in ("clean", "overflow"))
    assert ckpt["scalers"][1]["scale"] == clean["scalers"][1]["scale"] / 2  # the critic's scaler skipped that step
    assert all(torch.isfinite(v).all() for v in ckpt["critic"].values())


def test_fp16_nan_that_persists_still_stops(tiny_dataset, tmp_path, monkeypatch):
    poison_gradient_penalty(monkeypatch, float("nan"), range(3, 100))
    cfg = tiny_config(tiny_dataset, tmp_path, amp="fp16", epoch_steps=20, n_critic=1, log_every=4)
    with pytest.raises(SystemExit, match=r"Non-finite loss at step 3 and the 9 steps after it \(the fp16 gradient "
                                         r"scaler skipped them\).*no checkpoint was written yet"):
        tag.train(cfg)


@pytest.mark.core
def test_gradient_penalty_runs_in_fp32_under_autocast():
    seen = []
    critic = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(1))
    critic[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    wrapped = lambda x, labels: (critic(x).squeeze(1), None)
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped(real, None)[0]  # outside the penalty autocast applies...
        gp = tag.gradient_penalty(wrapped, real, fake, None)
    assert seen == [torch.bfloat16, torch.float32]  # ...inside it does not
    assert gp.dtype == torch.float32


def torchrun(script, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          script, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


DDP_TRAIN = """
import os, sys, torch
import train_audio_gan as tag
cfg = tag.parse_config(sys.argv[2:])
result = tag.train(cfg)
# test-side only: every rank records its final weights so the test can compare them
torch.save({"generator": result["generator"].state_dict(), "critic": result["critic"].state_dict()},
           f"{sys.argv[1]}/rank{os.environ['RANK']}.pt")
sys.stdout.flush()
os._exit(0)  # train() has destroyed the process group; skip finalization, where gloo's threads can abort
"""


def test_ddp_two_processes_stay_in_sync_and_write_once(tiny_dataset, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_TRAIN)
    out = tmp_path / "ddp"
    flags = ["--base_path", tiny_dataset, "--out_dir", str(out), "--n_frames", "16", "--batch_size", "2",
             "--latent_dim", "8", "--embed_dim", "4", "--g_channels", "4", "--d_channels", "4", "--epochs", "2",
             "--epoch_steps", "4", "--n_critic", "2", "--log_every", "2", "--vocoder", "griffinlim", "--device", "cpu"]
    stdout = torchrun(str(script), str(tmp_path), *flags)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for net in ("generator", "critic"):
        for k, v in ranks[0][net].items():
            assert torch.equal(v, ranks[1][net][k]), f"{net}.{k} differs between ranks"
    assert stdout.count("epoch 2/2  step 8") == 1  # rank 0 alone prints...
    assert open(out / "losses.csv").read().count("\n") == 1 + 4  # ...and writes: 8 steps / log_every 2, no duplicates
    assert sorted(os.listdir(out / "gan_generated_audio")) == ["epoch_001", "epoch_002"]
    assert not [p for p in out.rglob(f"*{tag.TMP_MARK}*")]
    # A DDP checkpoint resumes in a single process, and a single-process checkpoint resumes under DDP.
    single = tag.train(tag.parse_config(flags + ["--epochs", "3", "--resume"]))
    assert single["history"]["step"][-1] == 12
    torchrun(str(script), str(tmp_path), *flags, "--epochs", "4", "--resume")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 16


DDP_GRADIENTS = """
import os, sys, copy, gc, torch, torch.distributed as dist
import train_audio_gan as tag
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
critic = tag.OtherCritic(3, 16, 16, channels=4)  # concat conditioning: a label plane beside the mel
local, plain = copy.deepcopy(critic), copy.deepcopy(critic)
ddp = torch.nn.parallel.DistributedDataParallel(critic)
forwards = []
ddp.register_forward_pre_hook(lambda module, args: forwards.append(1))
torch.manual_seed(100 + rank)  # each rank its own batch
real, fake, labels = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.randint(3, (4,))
cfg = tag.Config(aux_weight=1.0, lambda_gp=10.0, gp_every=2)  # the auxiliary classifier's and the lazy penalty's terms
for model, penalise in ((ddp, True), (local, True), (plain, False)):
    torch.manual_seed(7 + rank)  # the same interpolation weights for every computation
    loss, wdist, gp = tag.critic_loss(model, real, fake, labels, cfg, None, penalise)  # the script's own critic loss
    loss.backward()
assert forwards == [1], "one DDP forward per backward: the penalty must call the unwrapped critic"
grads = lambda m: torch.cat([p.grad.flatten() for p in m.parameters()])
own = grads(local)
assert not torch.allclose(own, grads(plain)), "the penalty should contribute to the gradient"
mean = own.clone()
dist.all_reduce(mean)
mean /= 2
assert not torch.allclose(own, mean), "the ranks' batches should differ"
assert torch.allclose(grads(critic), mean, atol=1e-6), "DDP gradient is not the mean of the ranks' gradients"
open(os.path.join(sys.argv[1], f"ok{rank}"), "w").write("ok")
del ddp  # DDP's reducer holds gloo work: free it while the process group still exists
gc.collect()
dist.barrier()
dist.destroy_process_group()
os._exit(0)  # skip interpreter finalization, where gloo's worker threads can still abort the process (SIGABRT)
"""


def test_ddp_averages_gradients_through_the_gradient_penalty(tmp_path):
    script = tmp_path / "ddp_grads.py"
    script.write_text(DDP_GRADIENTS)
    torchrun(str(script), str(tmp_path))
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()
