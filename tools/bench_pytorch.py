#!/usr/bin/env python3
"""The PyTorch side of bench/compare (issue 3): the same workloads as
crates/psotune-bench, run with diffusers' UNet2DConditionModel and peft.

Dev-side only. bench/compare drives it; each workload runs in its own process
so that the peak RSS (VmHWM) is that workload's alone.

    python tools/bench_pytorch.py make-models OUT      # OUT/small, OUT/sd-turbo (random init)
    python tools/bench_pytorch.py gemm                 # 2048^3 sgemm GFLOP/s
    python tools/bench_pytorch.py train --model OUT/small --batch 16 --steps 3
    python tools/bench_pytorch.py train --model OUT/sd-turbo --batch 1 --lora-rank 32
    python tools/bench_pytorch.py sample --model OUT/small --batch 16 --sample-steps 4

Every command ends with one line `RESULT key=value ...` that bench/compare reads.
Threads: --threads (default 2) sets torch.set_num_threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

# The SD 2.1 scaled-linear training schedule, shared by SD-Turbo (and by
# psotune's SchedulerConfig::sd_turbo(), which the Rust side uses).
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
TEXT_LEN = 77
# torch.optim.AdamW defaults except lr; the Rust side passes the same numbers to
# psotune::train::AdamW.
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

# `small`: block_out_channels 32/64/64, two cross-attention down blocks and a
# plain one (mirrored on the way up), cross-attention width 64.
SMALL_CONFIG = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=64,
    attention_head_dim=(2, 4, 4),  # diffusers quirk: number of heads
    use_linear_projection=True,
    norm_num_groups=32,
)

# `sd-turbo`: stabilityai/stable-diffusion-2-1 unet/config.json (SD-Turbo
# shares the architecture).
SD21_CONFIG = dict(
    act_fn="silu",
    attention_head_dim=(5, 10, 20, 20),
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    dual_cross_attention=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-05,
    norm_num_groups=32,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=4,
    sample_size=96,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    upcast_attention=True,
    use_linear_projection=True,
)


def peak_rss_mb() -> float:
    """VmHWM of this process (the RSS high-water mark), in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def result(**kv) -> None:
    print("RESULT " + " ".join(f"{k}={v}" for k, v in kv.items()), flush=True)


def make_models(out: Path) -> None:
    from diffusers import UNet2DConditionModel

    for name, cfg, seed in (("small", SMALL_CONFIG, 0), ("sd-turbo", SD21_CONFIG, 1)):
        dest = out / name
        if (dest / "diffusion_pytorch_model.safetensors").exists():
            print(f"{dest}: exists")
            continue
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        unet = UNet2DConditionModel(**cfg)
        unet.save_pretrained(dest, safe_serialization=True, max_shard_size="100GB")
        n = sum(p.numel() for p in unet.parameters())
        print(f"{dest}: {n / 1e6:.1f} M parameters, random init, saved in {time.perf_counter() - t0:.1f} s", flush=True)


def gemm(n: int, reps: int) -> None:
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    result(workload="gemm", ms=f"{ms:.2f}", gflops=f"{2 * n**3 / (ms * 1e-3) / 1e9:.1f}")


def load_unet(model: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(model, torch_dtype=torch.float32)


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        print(f"  step {i}: {times[-1]:.1f} ms", flush=True)
    return times


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train(args) -> None:
    from diffusers import DDPMScheduler

    unet = load_unet(args.model)
    load_peak = peak_rss_mb()
    cfg = unet.config
    if args.lora_rank > 0:
        from peft import LoraConfig

        # As diffusers' train_text_to_image_lora.py: freeze the base, inject
        # LoRA into the attention projections, train only the adapters.
        unet.requires_grad_(False)
        unet.add_adapter(
            LoraConfig(
                r=args.lora_rank,
                lora_alpha=args.lora_rank,
                init_lora_weights="gaussian",
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            )
        )
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    print(f"  trainable parameters: {n_train / 1e6:.3f} M", flush=True)
    opt = torch.optim.AdamW(params, **ADAMW)
    sched = DDPMScheduler(**BETAS)

    g = torch.Generator().manual_seed(0)
    b, c, s = args.batch, cfg.in_channels, args.latent
    x0 = torch.randn(b, c, s, s, generator=g)
    ctx = torch.randn(b, TEXT_LEN, cfg.cross_attention_dim, generator=g)

    def loss_of_step():
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g)
        noisy = sched.add_noise(x0, noise, t)
        pred = unet(noisy, t, ctx).sample
        return torch.nn.functional.mse_loss(pred, noise)

    def step():
        loss = loss_of_step()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = timed(step, args.steps, args.warmup)
    peak = peak_rss_mb()  # before the FLOP count, which holds its own state

    def fwd_bwd():
        loss_of_step().backward()
        opt.zero_grad(set_to_none=True)

    flops = count_flops(fwd_bwd) if args.flops else 0
    result(
        workload="train",
        ms=f"{statistics.median(times):.1f}",
        peak_mb=f"{peak:.0f}",
        load_peak_mb=f"{load_peak:.0f}",
        flops=flops,
        trainable=n_train,
    )


def sample(args) -> None:
    from diffusers import EulerAncestralDiscreteScheduler

    unet = load_unet(args.model).eval()
    load_peak = peak_rss_mb()
    cfg = unet.config
    sched = EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="trailing")
    g = torch.Generator().manual_seed(0)
    b, c, s = args.batch, cfg.in_channels, args.latent
    ctx = torch.randn(b, TEXT_LEN, cfg.cross_attention_dim, generator=g)

    @torch.no_grad()
    def run():
        sched.set_timesteps(args.sample_steps)
        x = torch.randn(b, c, s, s, generator=g) * sched.init_noise_sigma
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t, ctx).sample
            x = sched.step(out, t, x, generator=g).prev_sample
        return x

    times = timed(run, args.steps, args.warmup)
    peak = peak_rss_mb()
    flops = count_flops(run) if args.flops else 0
    ms = statistics.median(times)
    result(
        workload="sample",
        ms=f"{ms:.1f}",
        peak_mb=f"{peak:.0f}",
        load_peak_mb=f"{load_peak:.0f}",
        flops=flops,
        images_per_s=f"{b / (ms * 1e-3):.3f}",
        ms_per_image=f"{ms / b:.1f}",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-models")
    m.add_argument("out", type=Path)
    sub.add_parser("describe", help="print torch's CPU capability and exit")
    gm = sub.add_parser("gemm")
    gm.add_argument("--n", type=int, default=2048)
    gm.add_argument("--reps", type=int, default=10)
    for name in ("train", "sample"):
        w = sub.add_parser(name)
        w.add_argument("--model", type=Path, required=True)
        w.add_argument("--batch", type=int, default=16)
        w.add_argument("--latent", type=int, default=32, help="latent side (32 = 256x256 images)")
        w.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
        w.add_argument("--warmup", type=int, default=1)
        w.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count")
        if name == "train":
            w.add_argument("--lora-rank", type=int, default=0, help="0: train all weights")
            w.add_argument("--checkpointing", action="store_true", help="diffusers' enable_gradient_checkpointing()")
        else:
            w.add_argument("--sample-steps", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # Where it was measured: ATen's vector kernels (ATEN_CPU_CAPABILITY
    # caps them) and the MKL / oneDNN caps bench/compare --simd sets.
    caps = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    print(f"torch {torch.__version__}: cpu capability {torch.backends.cpu.get_cpu_capability()}, caps {caps or 'none'}")
    if args.cmd == "make-models":
        make_models(args.out)
    elif args.cmd == "describe":
        pass
    elif args.cmd == "gemm":
        gemm(args.n, args.reps)
    elif args.cmd == "train":
        train(args)
    else:
        sample(args)


if __name__ == "__main__":
    main()
