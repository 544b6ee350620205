#!/usr/bin/env python
"""Training-step cost of the method against detectron2's vanilla Faster R-CNN on the same two images.

Both models (same backbone and input size) train interleaved in one process, alternating which goes first,
each step starting from the same weights (the vanilla model is reset to the method's before every
iteration, so the two never drift apart); ms/step is the median over --iters steps after --warmup. The
whole-run cost of real trainings is in tools/report.py's "s/iter" column (from each run's metrics.json).
torch.profiler then times the method's own parts (record_function labels mammo_tl/...). --memory runs each
variant in a fresh subprocess and reports its peak RSS (and peak GPU memory) over the steps.

    python bench/train_step.py --json output/bench/train_step.json
    python bench/train_step.py --config configs/paper/d_tl_similarity.yaml --device cuda   # the paper's setting
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
from _common import clone_batch, fixed_pair, machine, method_and_vanilla_cfgs, summary, table, timed, write_json
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage


def build(cfg, device, state=None):
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def step(model, opt, batch, device, scaler=None):
    """One training step; with a GradScaler, under CUDA autocast (float16) as detectron2's AMPTrainer."""
    data = clone_batch(batch, device)

    def run():
        with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
            losses = model(data)
        opt.zero_grad()
        if scaler is None:
            sum(losses.values()).backward()
            opt.step()
        else:
            scaler.scale(sum(losses.values())).backward()
            scaler.step(opt)
            scaler.update()

    return timed(run, device)


def profile(model, opt, batch, device, steps=3):
    """(ms/step of each mammo_tl/ label, self CPU ms/step of every op)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step(model, opt, batch, device)
    parts, ops = {}, {}
    for e in prof.key_averages():
        if e.key.startswith("mammo_tl/"):
            parts[e.key] = e.cpu_time_total / 1000.0 / steps
        else:
            ops[e.key] = e.self_cpu_time_total / 1000.0 / steps
    return parts, ops


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(args):
    """Runs in a subprocess: peak RSS / GPU memory of one variant over the steps."""
    method, vanilla = method_and_vanilla_cfgs(args.config, args.opts)
    cfg = method if args.only == "method" else vanilla
    torch.manual_seed(0)
    model, opt = build(cfg, args.device)
    batch = fixed_pair(cfg)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = _proc_status_mb("VmRSS")
    # Linux: writing 5 to clear_refs resets the peak (VmHWM), which imports have already pushed up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with EventStorage():
        for _ in range(args.warmup + 3):
            step(model, opt, batch, args.device)
    out = {"variant": args.only, "peak_rss_mb": _proc_status_mb("VmHWM"),
           "rss_before_steps_mb": rss_before,
           "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None}
    print("MEMORY " + json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/synthetic/d_tl_similarity.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="also measure peak memory per variant (subprocesses)")
    p.add_argument("--amp", action="store_true", help="both variants under CUDA autocast + GradScaler (GPU only)")
    p.add_argument("--only", choices=["method", "vanilla"], help=argparse.SUPPRESS)
    p.add_argument("--json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args()
    if args.amp and not args.device.startswith("cuda"):
        p.error("--amp needs --device cuda (detectron2's AMPTrainer is CUDA-only)")
    if args.only:
        memory_child(args)
        return

    method_cfg, vanilla_cfg = method_and_vanilla_cfgs(args.config, args.opts)
    torch.manual_seed(0)
    method, opt_m = build(method_cfg, args.device)
    vanilla, opt_v = build(vanilla_cfg, args.device, state=method.state_dict())
    batch = fixed_pair(method_cfg)
    times = {"method": [], "vanilla": []}
    scaler = (lambda: torch.amp.GradScaler("cuda")) if args.amp else (lambda: None)
    runs = {"method": (method, opt_m), "vanilla": (vanilla, opt_v)}
    scalers = {"method": scaler(), "vanilla": scaler()}
    with EventStorage():
        for i in range(args.warmup + args.iters):
            # both variants step from the same weights every iteration (the method's): trained apart on one
            # pair they drift, and so would their proposals and per-step cost
            vanilla.load_state_dict(method.state_dict())
            order = ["method", "vanilla"] if i % 2 == 0 else ["vanilla", "method"]
            for name in order:
                t = step(*runs[name], batch, args.device, scalers[name])
                if i >= args.warmup:
                    times[name].append(t)
        parts, ops_m = profile(method, opt_m, batch, args.device)
        _, ops_v = profile(vanilla, opt_v, batch, args.device)
    res = {k: summary(v) for k, v in times.items()}
    # each iteration runs both variants back to back: the median of their per-iteration ratios is robust
    # to the machine's drift over the run
    ratio = statistics.median(m / v for m, v in zip(times["method"], times["vanilla"]))
    extra = sorted(((k, ops_m.get(k, 0.0) - ops_v.get(k, 0.0)) for k in set(ops_m) | set(ops_v)),
                   key=lambda kv: -kv[1])[:8]
    out = {"ratio": ratio, "ratio_of_medians": res["method"]["median_ms"] / res["vanilla"]["median_ms"],
           "method": res["method"], "vanilla": res["vanilla"], "method_parts_ms": parts,
           "largest_extra_self_cpu_ms": dict(extra),
           "config": args.config, "opts": args.opts, "device": args.device, "amp": args.amp,
           "input_size": list(method_cfg.INPUT.FIXED_SIZE), "depth": method_cfg.MODEL.RESNETS.DEPTH,
           "machine": machine()}
    if args.memory:
        for variant in ("method", "vanilla"):
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--config", args.config, "--device",
                                args.device, "--only", variant, "--warmup", str(args.warmup), *args.opts],
                               capture_output=True, text=True, check=True)
            mem = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("MEMORY "))[7:])
            out[f"{variant}_memory"] = mem
    print(f"training step{' (AMP)' if args.amp else ''}, {args.config}, {out['input_size'][0]}x{out['input_size'][1]}, "
          f"ResNet-{out['depth']}, {args.device} ({machine()['gpu']}, {torch.get_num_threads()} threads)")
    rows = [[k, f"{v['median_ms']:.1f}", f"{v['p25_ms']:.1f}-{v['p75_ms']:.1f}"] for k, v in res.items()]
    rows.append(["ratio method/vanilla (median of per-iteration ratios)", f"{ratio:.3f}", ""])
    rows.append(["ratio of the medians", f"{out['ratio_of_medians']:.3f}", ""])
    print(table(["variant", "ms/step (median)", "IQR"], rows))
    print(table(["method part (torch.profiler)", "ms/step"], [[k, f"{v:.2f}"] for k, v in sorted(parts.items())]))
    print(table(["op: self CPU time, method minus vanilla", "ms/step"], [[k, f"{v:+.2f}"] for k, v in extra]))
    if args.memory:
        print(table(["variant", "peak RSS MB", "RSS before steps MB", "peak GPU MB"],
                    [[v, f"{out[v + '_memory']['peak_rss_mb']:.0f}", f"{out[v + '_memory']['rss_before_steps_mb']:.0f}",
                      "not measured (no GPU)" if out[v + "_memory"]["peak_gpu_mb"] is None
                      else f"{out[v + '_memory']['peak_gpu_mb']:.0f}"] for v in ("method", "vanilla")]))
    write_json(args.json, out)


if __name__ == "__main__":
    main()
