"""bench/gpu_check.py, the one-command GPU check: its CPU path, at tiny sizes, and the command its --quality runs."""
import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_its_cpu_parts_and_reports_each():
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # as on a machine without a GPU
    run = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--quick"], capture_output=True,
                         text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "No CUDA GPU found" in out and "torch " in out
    for amp in ("fp32", "bf16", "fp16"):
        assert f"  {amp}: " in out and "losses finite: yes" in out
    assert "vocoder: HiFi-GAN (universal)" in out and "real-time factor" in out
    assert "end to end: 1 epoch with evaluation, then generate mode" in out and "expected outputs written" in out
    assert "2-GPU torchrun: skipped" in out
    assert out.strip().endswith("result: all checks passed (CPU parts only: no GPU here)")


def test_gpu_check_quality_trains_the_gpu_presets_sizes_and_lr(monkeypatch, tmp_path):
    """--quality (for a lent GPU) hands bench/quality.py the GPU preset's sizes and lr, not a copy of its own."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import gpu_check
    (tmp_path / "train").mkdir()
    calls = []
    monkeypatch.setattr(gpu_check.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    args = argparse.Namespace(data=str(tmp_path), quality_minutes=1.0, quality_out=str(tmp_path / "out"))
    gpu_check.quality_run(args, "cpu")
    cmd = calls[0]
    assert cmd[1].endswith(os.path.join("bench", "quality.py"))
    assert dict(kv.split("=") for kv in cmd[cmd.index("--set") + 1].split(",")) == dict(
        batch_size="128", g_channels="64", d_channels="64", lr="0.0001")
