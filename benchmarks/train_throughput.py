"""Images/s of a dermlow training epoch (LOW + CE, per-sample records) against a plain,
hand-written timm fine-tuning loop with the same model, data, precision and batch size.

Both loops iterate over the same batches, held in (pinned) memory so that the data loader does
not hide the difference; the order of the two measurements alternates over several rounds and
the median is reported. Target on a GPU (issue 7): dermlow >= 0.95x the plain loop.

    python benchmarks/train_throughput.py                               # GPU: DenseNet-161, batch 32, 224 px
    python benchmarks/train_throughput.py --model mobilenetv3_small_050 --image-size 64 --steps 10   # CPU check
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dermlow import config  # noqa: E402
from dermlow.data.demo import make_demo  # noqa: E402
from dermlow.data.loading import make_loader  # noqa: E402
from dermlow.data.transforms import to_input  # noqa: E402
from dermlow.training.loop import train_one_epoch  # noqa: E402
from dermlow.training.session import Session, start_session  # noqa: E402


def plain_epoch(s: Session, batches: list) -> None:
    """The baseline: forward, cross-entropy, backward, step. No weighting, no records."""
    s.model.train()
    for images, labels, _ in batches:
        images = to_input(images, s.device, s.normalisation, channels_last=s.channels_last)  # same input path
        labels = labels.to(s.device, non_blocking=True)
        with s.autocast():
            loss = F.cross_entropy(s.model(images), labels)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="densenet161")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224, help="crop size fed to the network")
    ap.add_argument("--steps", type=int, default=30, help="batches per timed epoch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dermlow-throughput-"))
    n_images = args.batch_size * args.steps
    data_dir = make_demo(work / "data", year=2018, n_images=max(n_images + 60, 120), seed=0, size=(300, 225))
    flags = [f"data.data_dir={data_dir}", f"data.cache_dir={work / 'cache'}", f"run.out={work / 'runs'}",
             f"data.image_size={int(args.image_size * 300 / 224)}", f"data.crop_size={args.image_size}",
             f"model.name={args.model}", "model.pretrained=false", f"optim.batch_size={args.batch_size}",
             f"run.device={args.device}", f"run.amp={not args.no_amp}", f"model.compile={args.compile}",
             f"data.num_workers={min(os.cpu_count() or 1, 8)}", "data.test_fraction=0.05", "data.val_fraction=0.05", "run.log_every=1000000"]
    s = start_session(config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags)))
    loader = make_loader(s.datasets["train"], batch_size=args.batch_size, shuffle=True, seed=0, epoch=1,
                         num_workers=min(os.cpu_count() or 1, 8), drop_last=True)
    pin = s.device.type == "cuda"
    batches = [tuple(t.pin_memory() if pin else t for t in b) for b, _ in zip(loader, range(args.steps), strict=False)]
    images = len(batches) * args.batch_size

    timed(lambda: plain_epoch(s, batches[:3]), s.device)  # warm-up (cuDNN autotune, compile)
    timed(lambda: train_one_epoch(s, batches[:3]), s.device)
    plain, ours = [], []
    for r in range(args.rounds):
        order = [("plain", lambda: plain_epoch(s, batches)), ("dermlow", lambda: train_one_epoch(s, batches))]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            (plain if name == "plain" else ours).append(images / timed(fn, s.device))
    p, d = statistics.median(plain), statistics.median(ours)
    device = torch.cuda.get_device_name() if s.device.type == "cuda" else "CPU"
    precision = str(s.amp_dtype).removeprefix("torch.") if s.amp_dtype else "float32"
    print("| device | model | batch | px | precision | plain img/s | dermlow img/s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {device} | {args.model} | {args.batch_size} | {args.image_size} | {precision} | {p:.1f} | {d:.1f} | {d / p:.3f} |")


if __name__ == "__main__":
    main()
