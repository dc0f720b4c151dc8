"""Which classes a run's critic tells apart, beside which the judge hears in the run's samples (issue #32, music): a
critic that cannot tell two classes apart gives the generator no reason to either.

    python bench/class_probe.py --data runs/gm_notes --n_frames 144 --out runs/gm3500 \\
        runs/gm3500/default-42/checkpoint.pt runs/gm_band/band_pool-42/checkpoint.pt

--data, --n_frames and --out name the judge as bench/quality.py does. For each checkpoint: the accuracy of its
critic's own auxiliary classifier on every real training clip and every held-out one (one crop each, as the critic
sees them in training), the judge's accuracy on the run's heard samples (Evaluator.generated: quality.py's figure),
and for every class either gets below 80 % right, what they take it for. A run of bench/critic_ideas.py (a folder
named <idea>-<seed>) gets that idea's critic.
"""
import dataclasses
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import critic_ideas  # noqa: E402
import same_judge  # noqa: E402
from quality import tag  # noqa: E402


def confusion(predicted, labels, n_classes):
    """(n_classes, n_classes) counts: row the true class, column the predicted one."""
    return torch.bincount(labels * n_classes + predicted, minlength=n_classes ** 2).view(n_classes, n_classes)


def taken_for(m, classes, below=0.8):
    """'class right% (taken for other share%, ...)' for each class (row of m) right less than `below` of the time."""
    out = []
    for k, row in enumerate(m.tolist()):
        total = max(sum(row), 1)
        if row[k] < below * total:
            others = sorted(((n, c) for c, n in enumerate(row) if c != k and n), reverse=True)[:2]
            out.append(f"{classes[k]} {row[k] / total:.0%} (" + ", ".join(
                f"{classes[c]} {n / total:.0%}" for n, c in others) + ")")
    return "; ".join(out) or "none"


@torch.no_grad()
def critic_confusion(critic, data, batch=64):
    """The critic's auxiliary classifier on every clip of data (one crop each), as a confusion matrix."""
    torch.manual_seed(0)  # the same crops for every checkpoint
    predicted = []
    for idx in torch.arange(len(data)).split(batch):
        mel, labels = data.crops(idx)
        predicted.append(critic(mel, labels)[1].argmax(1).cpu())
    return confusion(torch.cat(predicted), data.labels, len(data.classes))


def run_critic(path, run_cfg, n_classes):
    """The checkpoint's critic, built as its run built it (run_cfg: the model sizes same_judge.generators read from
    it; a critic_ideas.py idea by its folder's name)."""
    critic_ideas.active["idea"] = os.path.basename(os.path.dirname(os.path.abspath(path))).rsplit("-", 1)[0]
    critic = critic_ideas.build_models(run_cfg, n_classes)[1]
    critic.load_state_dict(tag.load_checkpoint(path)["critic"])
    return critic.eval()


def main():
    args, evaluator, vocoder = same_judge.judge_from_flags(__doc__.split("\n\n")[0])
    cfg, classes = evaluator.cfg, evaluator.classes
    clips = {split: tag.MelClips(dataclasses.replace(cfg, base_path=os.path.join(args.data, split)),
                                 torch.device("cpu")) for split in ("train", "test")}
    print("| checkpoint | critic: real train | real held-out | judge: heard samples |\n|---|---|---|---|")
    lines = []
    for path, generator, run_cfg, scale in same_judge.generators(args.checkpoints, evaluator):
        critic = run_critic(path, run_cfg, len(classes))
        seen = {split: critic_confusion(critic, data) for split, data in clips.items()}
        logmel, labels = evaluator.generated(generator, scale, run_cfg.latent_dim)
        heard = evaluator.heard_set(evaluator.hear(logmel, vocoder), labels)
        judged = confusion(heard[0].argmax(1).cpu(), labels.cpu(), len(classes))
        right = lambda m: f"{(m.diag().sum() / m.sum()).item():.3f}"
        print(f"| {path} | {right(seen['train'])} | {right(seen['test'])} | {right(judged)} |", flush=True)
        lines += [f"{path}: critic on real training clips: {taken_for(seen['train'], classes)}",
                  f"{path}: judge on heard samples: {taken_for(judged, classes)}"]
    print("\n".join([""] + lines))


if __name__ == "__main__":
    main()
