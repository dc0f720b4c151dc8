"""Which classes a run's critic tells apart, beside which the judge hears in the run's samples (issue #32, music): a
critic that cannot tell two classes apart gives the generator no reason to either.

    python bench/class_probe.py --data runs/gm_notes --n_frames 144 --out runs/gm3500 \\
        runs/gm3500/default-42/checkpoint.pt runs/gm_band/band_pool-42/checkpoint.pt

--data, --n_frames and --out name the judge as bench/quality.py does. For each checkpoint: the accuracy of its
critic's own auxiliary classifier on every real training clip and every held-out one (one crop each, as the critic
sees them in training), the judge's accuracy on the run's samples as the GAN made them (its log-mels, before the
vocoder) and as heard (Evaluator.generated, through the vocoder: quality.py's figure), and for every class any of them
gets below 80 % right, what it is taken for. Last, the same judge on the real held-out clips, as they are (the floor)
and heard through the vocoder (the ceiling): what the vocoder alone mistakes. A run of bench/critic_ideas.py (a folder
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


def judged(evaluator, logmel, labels):
    """The judge on log-mels (N, n_mels, T) of classes labels, as a confusion matrix."""
    logits = evaluator.heard_set(logmel, labels)[0]
    return confusion(logits.argmax(1).cpu(), labels.cpu(), len(evaluator.classes))


def run_critic(path, run_cfg, n_classes):
    """The checkpoint's critic, built as its run built it (run_cfg: the model sizes same_judge.generators read from
    it; a critic_ideas.py idea by its folder's name)."""
    critic_ideas.active["idea"] = os.path.basename(os.path.dirname(os.path.abspath(path))).rsplit("-", 1)[0]
    critic = critic_ideas.build_models(run_cfg, n_classes)[1]
    critic.load_state_dict(tag.load_checkpoint(path)["critic"])
    return critic.eval()


def main():
    args, evaluator, vocoder = same_judge.judge_from_flags(__doc__.split("\n\n")[0], lambda p: p.add_argument(
        "--made_only", action="store_true", help="only the judge on the GAN's mels: seconds a checkpoint, where the "
        "critic and the vocoder take minutes (e.g. for every epoch's checkpoint of a run)"))
    cfg, classes = evaluator.cfg, evaluator.classes
    clips = {split: tag.MelClips(dataclasses.replace(cfg, base_path=os.path.join(args.data, split)),
                                 torch.device("cpu")) for split in ("train", "test")}
    right = lambda m: f"{(m.diag().sum() / m.sum()).item():.3f}"
    print("| checkpoint | critic: real train | real held-out | judge: GAN's mels | heard |\n|---|---|---|---|---|")
    lines = []
    for path, generator, run_cfg, scale in same_judge.generators(args.checkpoints, evaluator):
        logmel, labels = evaluator.generated(generator, scale, run_cfg.latent_dim)
        made = judged(evaluator, logmel, labels)
        if args.made_only:
            print(f"| {path} | | | {right(made)} | |", flush=True)
            lines.append(f"{path}: judge on the GAN's mels: {taken_for(made, classes)}")
            continue
        critic = run_critic(path, run_cfg, len(classes))
        seen = {split: critic_confusion(critic, data) for split, data in clips.items()}
        heard = judged(evaluator, evaluator.hear(logmel, vocoder), labels)
        print(f"| {path} | {right(seen['train'])} | {right(seen['test'])} | {right(made)} | {right(heard)} |",
              flush=True)
        lines += [f"{path}: critic on real training clips: {taken_for(seen['train'], classes)}",
                  f"{path}: judge on the GAN's mels: {taken_for(made, classes)}",
                  f"{path}: judge on heard samples: {taken_for(heard, classes)}"]
    if not args.made_only:  # the floor and the ceiling
        logmel, labels = same_judge.real_crops(evaluator, clips["test"]), clips["test"].labels
        real, heard = judged(evaluator, logmel, labels), judged(evaluator, evaluator.hear(logmel, vocoder), labels)
        print(f"| *real held-out clips (heard: the vocoder ceiling)* | | | {right(real)} | {right(heard)} |")
        lines += [f"real held-out clips: judge on their mels: {taken_for(real, classes)}",
                  f"real held-out clips: judge on them heard through the vocoder: {taken_for(heard, classes)}"]
    print("\n".join([""] + lines))


if __name__ == "__main__":
    main()
