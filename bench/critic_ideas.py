"""Two critic ideas of issue #18 that the script does not have, screened with bench/quality.py's protocol and judge.

    python bench/critic_ideas.py --steps 1250 --seeds 42,43 --variants default,feature_matching,freq_dilated

Every argument is quality.py's; --variants may also name the ideas below, each the default recipe plus one change:
- feature_matching, feature_matching100: the generator also matches the mean critic features of real clips, layer
  by layer (Salimans et al. 2016), L1 averaged over elements and layers, weight 10 (MelGAN's) or 100. The real
  features are the last critic step's (its real half, detached).
- freq_dilated: the conv2d critic's first layer is four 3x4 convolutions dilated 1, 2, 4 and 8 bins in frequency
  (c/4 channels each, concatenated), so the first layer spans up to 17 mel bins, several harmonics, where a 4x4
  kernel spans 4. Same output shape, about the same cost.
They patch the script from here, not the product: what does not win stays out of train_audio_gan.py.
"""
import dataclasses
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quality  # noqa: E402  (bench/quality.py: the protocol, the judge, the table)

tag = quality.tag
FM_WEIGHTS = {"feature_matching": 10.0, "feature_matching100": 100.0}
IDEAS = (*FM_WEIGHTS, "freq_dilated")
active = {"idea": "default"}  # the variant being built: quality.py trains them one at a time


class FeatureMatching(nn.Module):
    """A critic whose generator-step score is lowered by weight * the L1 distance between the fakes' mean features and
    the last critic step's real ones, so the generator's loss (-score) gains that term and nothing else changes."""

    def __init__(self, critic, weight):
        super().__init__()
        self.critic, self.weight, self.real, self.taken = critic, weight, None, []
        for m in critic.features:
            if isinstance(m, nn.LeakyReLU):
                m.register_forward_hook(lambda _m, _i, out: self.taken.append(out))

    def forward(self, mel, labels):
        self.taken.clear()
        score, logits = self.critic(mel, labels)
        if next(self.critic.parameters()).requires_grad:  # a critic step (real then fake) or its penalty
            if not mel.requires_grad:  # the critic step: its first half is real
                self.real = [h[: len(h) // 2].float().mean(0).detach() for h in self.taken]
            return score, logits
        # the generator step: each layer's mean over the batch (C, F, T) against the real one
        fm = sum((h.float().mean(0) - r).abs().mean() for h, r in zip(self.taken, self.real)) / len(self.real)
        return score - self.weight * fm, logits


class FreqDilated(nn.Module):
    """Conv2d(c_in, c, 4, 2, 1)'s replacement: four 3x4 convolutions dilated 1, 2, 4, 8 bins in frequency."""

    def __init__(self, c_in, c):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c // 4, (3, 4), 2, (d, 1), (d, 1)) for d in (1, 2, 4, 8))

    def forward(self, x):
        return torch.cat([conv(x) for conv in self.convs], 1)  # (B, c, n_mels / 2, n_frames / 2)


base_build_models, base_run_config = tag.build_models, quality.run_config


def build_models(cfg, n_classes):
    generator, critic = base_build_models(cfg, n_classes)
    if active["idea"] == "freq_dilated":
        first = critic.features[0]
        critic.features[0] = FreqDilated(first.in_channels, first.out_channels)
    if active["idea"] in FM_WEIGHTS:
        critic = FeatureMatching(critic, FM_WEIGHTS[active["idea"]])
    return generator, critic


def run_config(args, name, seed, extra):
    active["idea"] = name
    cfg = base_run_config(args, "default" if name in IDEAS else name, seed, extra)
    return dataclasses.replace(cfg, out_dir=os.path.join(args.out, f"{name}-{seed}"))


if __name__ == "__main__":
    tag.build_models, quality.run_config = build_models, run_config
    quality.VARIANTS.update({name: {} for name in IDEAS})
    quality.main()
