"""CPU speed of the vocoders: HiFi-GAN V1 against BigVGAN-v2 (22 kHz, 80 bands, 256x), random weights.

    python bench/vocoder_speed.py            # needs NVIDIA's bigvgan package: pip install --no-deps bigvgan

Random weights cost the same time as trained ones, so no download is needed. Each vocoder turns 8 mels of 1.5 s
(129 frames) into audio, in chunks of --vocoder_batch (8) as the script does; the real-time factor is compute time
over audio time (below 1: faster than real time). Median of --repeats runs after one warm-up.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train_audio_gan as tag  # noqa: E402

# nvidia/bigvgan_v2_22khz_80band_fmax8k_256x's generator sizes (its config.json); the mel fields are the script's.
BIGVGAN_V2_22K = dict(resblock="1", num_mels=80, upsample_rates=[4, 4, 2, 2, 2, 2],
                      upsample_kernel_sizes=[8, 8, 4, 4, 4, 4], upsample_initial_channel=1536,
                      resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3,
                      activation="snakebeta", snake_logscale=True, use_tanh_at_final=False, use_bias_at_final=False,
                      sampling_rate=22050, n_fft=1024, hop_size=256, win_size=1024, fmin=0, fmax=8000)


def rtf(vocoder, cfg, clips, frames, repeats):
    """Median real-time factor of vocoding `clips` mels of `frames` frames."""
    logmel = torch.randn(clips, cfg.n_mels, frames) - 4
    tag.vocode(logmel[:1], vocoder, cfg)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tag.vocode(logmel, vocoder, cfg)
        times.append(time.perf_counter() - t)
    return statistics.median(times) / (clips * frames * cfg.hop_length / cfg.sample_rate)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clips", type=int, default=8)
    args = p.parse_args()
    import bigvgan
    cfg = tag.Config()
    torch.manual_seed(0)
    hifigan = tag.HiFiGAN(tag.HIFIGAN_V1).eval()
    with torch.no_grad():
        big = bigvgan.BigVGAN(bigvgan.env.AttrDict(BIGVGAN_V2_22K))
        big.remove_weight_norm()
    big = tag.BigVGANVocoder(big).eval()
    frames = 129  # 1.5 s at 22.05 kHz, hop 256
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.clips} clips of 1.5 s, median of "
          f"{args.repeats}")
    for name, model in (("HiFi-GAN V1", hifigan), ("BigVGAN-v2 22 kHz 256x", big)):
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name} | {params:.1f} M | {rtf(model, cfg, args.clips, frames, args.repeats):.3f} |")


if __name__ == "__main__":
    main()
