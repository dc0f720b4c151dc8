"""Mixed precision and DistributedDataParallel (2 CPU processes, gloo), as far as a CPU can test them."""
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
    result = tag.train(tiny_config(tiny_dataset, tmp_path / amp, amp=amp, epochs=2))
    assert torch.isfinite(torch.tensor([result["history"][m] for m in tag.METRICS])).all()
    ckpt = torch.load(tmp_path / amp / "checkpoint.pt", weights_only=True)
    assert bool(ckpt["scalers"][0]) == (amp == "fp16")  # fp16 needs and saves a gradient scaler; bf16 does not
    tag.train(tiny_config(tiny_dataset, tmp_path / amp, amp=amp, epochs=3, resume=True))


def test_amp_auto_is_off_on_cpu():
    assert tag.amp_dtype(tag.Config(), torch.device("cpu")) is None
    assert tag.amp_dtype(tag.Config(amp="bf16"), torch.device("cpu")) is torch.bfloat16


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
    assert not [p for p in out.rglob("*.tmp*")]
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
critic = tag.Critic(3, 16, 16, channels=4)
local = copy.deepcopy(critic)
ddp = torch.nn.parallel.DistributedDataParallel(critic)
torch.manual_seed(100 + rank)  # each rank its own batch
real, fake, labels = torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16), torch.randint(3, (4,))
for model in (ddp, local):
    torch.manual_seed(7 + rank)  # the same interpolation weights for both computations
    scores, logits = model(torch.cat([real, fake]), torch.cat([labels, labels]))
    loss = 10 * tag.gradient_penalty(model, real, fake, labels) - (scores[:4].mean() - scores[4:].mean()) \
        + torch.nn.functional.cross_entropy(logits[:4], labels)  # the auxiliary classifier's term
    loss.backward()
own = torch.cat([p.grad.flatten() for p in local.parameters()])
mean = own.clone()
dist.all_reduce(mean)
mean /= 2
assert not torch.allclose(own, mean), "the ranks' batches should differ"
assert torch.allclose(torch.cat([p.grad.flatten() for p in critic.parameters()]), mean, atol=1e-6), \
    "DDP gradient is not the mean of the ranks' gradients"
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
