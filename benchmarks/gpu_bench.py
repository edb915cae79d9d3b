"""`make bench` (GPU path): a CNN on CIFAR-shaped data (3x32x32, 10 classes, random tensors
resident on the device) trained by the engine in fp32 and with `train.precision: bf16` +
`train.channels_last` (+ `train.compile` with --compile): samples/s, the ratio to fp32, and
the fraction of the device's peak FLOP/s, where the peak is a large bf16 matmul measured in
the same run. Skipped when no CUDA device is visible unless `--device cpu` (how the test
exercises it here).

Run from the project root: `python -m benchmarks.gpu_bench [--quick] [--device cpu] [--compile]`.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.common import out_argument, row, write_results

SHAPE = (3, 32, 32)


def model_and_data(device, n: int, quick: bool):
    import torch

    from models import DataSpec, build_model
    from pipeline import engine

    engine.seed_everything(0)
    channels = [8, 16] if quick else [64, 128, 256]
    config = {"channels": channels, "hidden_size": 32 if quick else 256, "batch_norm": True}
    model = build_model("cnn", config, DataSpec(SHAPE, 10)).to(device)
    x = torch.randn(n, *SHAPE)
    y = torch.randint(0, 10, (n,))
    train = engine.Batches(x, y, 128, device=device, shuffle=True, seed=0)
    val = engine.Batches(x[:256], y[:256], 256, device=device, shuffle=False)
    return model, train, val


def samples_per_second(device, n: int, epochs: int, quick: bool, **train) -> float:
    from pipeline import engine
    from pipeline.params.training import TrainParams
    from pipeline.tasks.predictive import Classification

    model, tr, va = model_and_data(device, n, quick)
    cfg = TrainParams.model_validate(
        {"epochs": epochs, "early_stopping": {"patience": 0}, "grad_clip": None, **train}
    )
    task = Classification(cfg, {"task": "classification"})
    engine.fit(model, tr, va, cfg.model_copy(update={"epochs": 1}), task)  # warm-up, compile
    model, tr, va = model_and_data(device, n, quick)
    return engine.fit(model, tr, va, cfg, task).samples_per_second


def flops_per_sample(device, quick: bool) -> float:
    """FLOPs of one training step (forward + backward) per sample, counted by PyTorch."""
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model, tr, _ = model_and_data(device, 128, quick)
    xb, yb = next(iter(tr))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(xb), yb).backward()
    return counter.get_total_flops() / len(xb)


def peak_flops(device, quick: bool) -> float:
    """FLOP/s of a large bf16 matmul on `device`: the peak this device reaches in practice."""
    import torch

    n = 1024 if quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    (a @ b).sum().item()
    reps = 3 if quick else 20
    start = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    c.sum().item()  # waits for the device
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench")
    parser.add_argument("--quick", action="store_true", help="a small CNN and few samples")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--compile", action="store_true", help="also time train.compile")
    out_argument(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device visible; skipped (use --device cpu to run on CPU)")
        skipped = row("GPU path (bf16 + channels_last)", "skipped: no CUDA device", "", None, "")
        write_results("gpu", {"skipped": True, "rows": [skipped]}, args.out)
        return 0
    device = torch.device(args.device)
    n, epochs = (512, 1) if args.quick else (20_000, 3)
    variants = {"fp32": {}, "bf16 + channels_last": {"precision": "bf16", "channels_last": True}}
    if args.compile:
        variants["bf16 + channels_last + compile"] = {
            **variants["bf16 + channels_last"],
            "compile": True,
        }
    rates = {
        name: samples_per_second(device, n, epochs, args.quick, **v) for name, v in variants.items()
    }
    per_sample = flops_per_sample(device, args.quick)
    peak = peak_flops(device, args.quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = []
    results = {"device": name, "flops_per_sample": per_sample, "peak_flops": peak, "variants": {}}
    for variant, rate in rates.items():
        fraction = rate * per_sample / peak
        results["variants"][variant] = {"samples_per_s": round(rate), "fraction_of_peak": fraction}
        print(f"{variant}: {rate:,.0f} samples/s, {fraction:.1%} of peak ({name})")
        rows.append(
            row(
                f"CNN on CIFAR-shaped data, {variant} ({name})",
                f"{rate:,.0f} samples/s, {fraction:.1%} of peak FLOP/s",
                f"{rates['fp32']:,.0f} samples/s (fp32)",
                rate / rates["fp32"],
                "reported",
            )
        )
    write_results("gpu", {"quick": args.quick, **results, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
