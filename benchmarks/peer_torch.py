"""musicflax's train step against a PyTorch twin of the same model, on this machine.

    pip install -e .[bench]          # torch + vector-quantize-pytorch (benchmark only)
    python benchmarks/peer_torch.py                       # both models, 3 runs each
    python benchmarks/peer_torch.py --models=pianoroll --runs=5 --steps=60

Each run starts one fresh process per framework, interleaved (musicflax, torch, musicflax,
...), so both see the same machine; a table gives the median (min-max) of steps/s and peak
resident memory over the runs, and their ratio. Both sides train the same layers with the
same parameter count (printed and checked) on the same synthetic batches:

- pianoroll: 512 input channels (roll + onsets of two instrument groups), hop 4 (two stride-2
  stages), width 128, 4 dilated residual blocks a stage, EMA VQ 512 x 64 with k-means init and
  dead-code restarts, BCE (onsets weighted 10), Adam + clipping; batch 32 x 128 frames.
- waveform: Jukebox-style 3 levels (hops 8 / 32 / 128), width 32, depth 4, EMA VQ 2048 x 64,
  L2 + multi-resolution STFT loss; batch 4 x 16384 samples.

The PyTorch side is written here from torch's and vector-quantize-pytorch's documented APIs
(nn.Conv1d, nn.ConvTranspose1d, torch.stft, VectorQuantize with EMA, k-means init and dead
code expiry, plain straight-through gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPECS = {
    "pianoroll": dict(channels=512, batch=32, length=128, width=128, depth=4, downs=(2,),
                      codebook=512, code_dim=64, waveform=False),
    "waveform": dict(channels=1, batch=4, length=16384, width=32, depth=4, downs=(3, 2, 2),
                     codebook=2048, code_dim=64, waveform=True),
}
STFT = ((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512))
ONSET_WEIGHT, OUTPUT_BIAS, LEARNING_RATE = 10.0, -4.6, 3e-3


def batches(spec, count: int = 4) -> list[np.ndarray]:
    """Deterministic inputs [B, T, C]: sparse notes (roll, then onsets) or a sum of tones."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        b, t, c = spec["batch"], spec["length"], spec["channels"]
        if spec["waveform"]:
            time_axis = np.arange(t) / 16000
            freqs = rng.uniform(100, 2000, (b, 1, 4))
            wave = 0.2 * np.sin(2 * np.pi * freqs * time_axis[None, :, None]).sum(-1)
            out.append(wave[..., None].astype(np.float32))
            continue
        roll, onsets = np.zeros((b, t, c // 2), np.uint8), np.zeros((b, t, c // 2), np.uint8)
        for i in range(b):
            for _ in range(40):
                ch, start = rng.integers(0, c // 2), rng.integers(0, t - 8)
                roll[i, start:start + rng.integers(2, 8), ch] = 1
                onsets[i, start, ch] = 1
        out.append(np.concatenate([roll, onsets], -1))
    return out


# ---------------------------------------------------------------------------- musicflax

def run_musicflax(name: str, steps: int, warmup: int) -> dict:
    import jax  # pylint: disable=g-import-not-at-top
    from configs import default  # pylint: disable=g-import-not-at-top
    from musicflax import app  # pylint: disable=g-import-not-at-top
    from musicflax.train import step as step_lib  # pylint: disable=g-import-not-at-top
    from musicflax.train.vqvae_model import VQVAEModel  # pylint: disable=g-import-not-at-top

    spec = SPECS[name]
    config = default.get_config()
    config.model.update(width=spec["width"], res_depth=spec["depth"], levels=len(spec["downs"]),
                        downs_t=spec["downs"], strides_t=(2,) * len(spec["downs"]),
                        dilation_growth=3, dilation_cycle=4)
    config.model.quantizer.update(codebook_size=spec["codebook"], code_dim=spec["code_dim"],
                                  init="kmeans", kmeans_iters=10, ema_decay=0.99,
                                  commitment=0.02, restart_threshold=1.0)
    config.optim.update(learning_rate=LEARNING_RATE, warmup_steps=0, end_lr_factor=1.0)
    if spec["waveform"]:
        config.data.update(representation="waveform", window_samples=spec["length"])
        config.model.update(output="waveform", output_bias=0.0)
        config.model.loss.update(stft_resolutions=STFT, spectral_weight=1.0)
    else:
        config.data.update(instrument_groups="keyboard:1,7;strings:41,42,43,44",
                           window_frames=spec["length"])
        config.model.update(output_bias=OUTPUT_BIAS)
        config.model.loss.onset_weight = ONSET_WEIGHT
    model = VQVAEModel(config)
    tx, _ = step_lib.make_optimizer(config.optim, steps + warmup)
    train_step = jax.jit(step_lib.make_train_step(model, tx), donate_argnums=(0,))
    def init(rng):  # as the trainer builds its state: one jitted function
        params, model_state = model.init(rng)
        return step_lib.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                                   opt_state=tx.init(params), model_state=model_state, rng=rng)
    state = jax.jit(init)(jax.random.PRNGKey(0))
    count = sum(x.size for x in jax.tree.leaves(state.params))
    key = "inputs"
    data = []
    for x in batches(spec):
        if spec["waveform"]:
            data.append({key: jax.device_put(x)})
        else:
            half = x.shape[-1] // 2
            data.append({"inputs": jax.device_put(x[..., :half]),
                         "onsets": jax.device_put(x[..., half:])})
    for i in range(warmup):
        state, metrics = train_step(state, data[i % len(data)])
        if i == 0:
            app.release_freed_memory()  # as the trainer does after its first step
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = train_step(state, data[i % len(data)])
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "params": int(count),
            "loss": float(metrics["loss"])}


# ---------------------------------------------------------------------------- PyTorch twin

def run_torch(name: str, steps: int, warmup: int) -> dict:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top
    from vector_quantize_pytorch import VectorQuantize  # pylint: disable=g-import-not-at-top

    torch.manual_seed(0)
    spec = SPECS[name]
    width, depth = spec["width"], spec["depth"]

    class ResBlock(nn.Module):
        def __init__(self, dilation):
            super().__init__()
            self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
            self.mix = nn.Conv1d(width, width, 1)

        def forward(self, x):
            return x + self.mix(torch.relu(self.conv(torch.relu(x))))

    def stack(reverse=False):
        dilations = [3 ** (i % 4) for i in range(depth)]
        return [ResBlock(d) for d in (reversed(dilations) if reverse else dilations)]

    class Level(nn.Module):
        """One level: strided encoder, EMA VQ, mirrored decoder (as musicflax's)."""

        def __init__(self, stages):
            super().__init__()
            enc, channels = [], spec["channels"]
            for _ in range(stages):
                enc += [nn.Conv1d(channels, width, 4, stride=2, padding=1), *stack()]
                channels = width
            enc.append(nn.Conv1d(width, spec["code_dim"], 3, padding=1))
            self.encoder = nn.Sequential(*enc)
            self.vq = VectorQuantize(dim=spec["code_dim"], codebook_size=spec["codebook"],
                                     decay=0.99, commitment_weight=0.02, kmeans_init=True,
                                     kmeans_iters=10, threshold_ema_dead_code=1,
                                     rotation_trick=False)
            dec = [nn.Conv1d(spec["code_dim"], width, 3, padding=1)]
            for _ in range(stages):
                dec += [*stack(reverse=True), nn.ConvTranspose1d(width, width, 4, stride=2,
                                                                 padding=1)]
            out = nn.Conv1d(width, spec["channels"], 3, padding=1)
            nn.init.constant_(out.bias, 0.0 if spec["waveform"] else OUTPUT_BIAS)
            self.decoder = nn.Sequential(*dec, out)

        def forward(self, x):  # x [B, C, T]
            z = self.encoder(x).transpose(1, 2)
            q, _, commit = self.vq(z)
            return self.decoder(q.transpose(1, 2)), commit

    hops = np.cumsum(spec["downs"])
    model = nn.ModuleList([Level(int(s)) for s in hops])
    count = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.99))
    windows = {n: torch.hann_window(w, periodic=True) for n, _, w in STFT}

    def magnitude(x, n_fft, hop, win):
        pad = (n_fft - win) // 2
        window = nn.functional.pad(windows[n_fft], (pad, n_fft - win - pad))
        s = torch.stft(x, n_fft, hop, n_fft, window=window, center=True, pad_mode="constant",
                       return_complex=True)
        return torch.sqrt(torch.clamp(s.real ** 2 + s.imag ** 2, min=1e-7))

    def loss_fn(x):  # x [B, T, C]
        inputs = x.transpose(1, 2)
        total = 0.0
        for level in model:
            out, commit = level(inputs)
            if spec["waveform"]:
                pred, target = out[:, 0], inputs[:, 0]
                recon = torch.mean((pred - target) ** 2)
                for n_fft, hop, win in STFT:
                    sp, st = magnitude(pred, n_fft, hop, win), magnitude(target, n_fft, hop, win)
                    recon = recon + (torch.linalg.norm(st - sp) / torch.linalg.norm(st)
                                     + torch.mean(torch.abs(torch.log(st) - torch.log(sp)))) / len(STFT)
            else:
                half = spec["channels"] // 2
                bce = nn.functional.binary_cross_entropy_with_logits
                recon = bce(out[:, :half], inputs[:, :half]) + ONSET_WEIGHT * bce(
                    out[:, half:], inputs[:, half:])
            total = total + recon + commit
        return total

    data = [torch.from_numpy(x.astype(np.float32)) for x in batches(spec)]

    def train_step(x):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    for i in range(warmup):
        train_step(data[i % len(data)])
    start = time.perf_counter()
    for i in range(steps):
        loss = train_step(data[i % len(data)])
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "params": int(count), "loss": float(loss)}


# ---------------------------------------------------------------------------- driver

RUNNERS = {"musicflax": run_musicflax, "torch": run_torch}


def child(framework: str, name: str, steps: int, warmup: int) -> None:
    sys.path.insert(0, REPO)
    result = RUNNERS[framework](name, steps, warmup)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def spawn(framework: str, name: str, steps: int, warmup: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, __file__, f"--child={framework}", f"--models={name}",
                           f"--steps={steps}", f"--warmup={warmup}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{framework} {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def summary(values) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pianoroll,waveform")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: per model)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    default_steps = {"pianoroll": 40, "waveform": 8}
    if args.child:
        child(args.child, args.models, args.steps, args.warmup)
        return
    rows = []
    for name in args.models.split(","):
        steps = args.steps or default_steps[name]
        results = {f: [] for f in RUNNERS}
        for _ in range(args.runs):
            for framework in RUNNERS:
                results[framework].append(spawn(framework, name, steps, args.warmup))
        counts = {f: {r["params"] for r in results[f]} for f in RUNNERS}
        if counts["musicflax"] != counts["torch"]:
            raise SystemExit(f"{name}: parameter counts differ: {counts}")
        speed = {f: [r["steps_per_s"] for r in results[f]] for f in RUNNERS}
        memory = {f: [r["peak_rss_gb"] for r in results[f]] for f in RUNNERS}
        rows.append((name, counts["torch"].pop(), speed, memory))
    print(f"{'model':<10}{'params':>11}  {'framework':<10}{'steps/s median (min-max)':>26}"
          f"{'peak RSS GB':>22}")
    for name, count, speed, memory in rows:
        for framework in RUNNERS:
            print(f"{name:<10}{count:>11,}  {framework:<10}{summary(speed[framework]):>26}"
                  f"{summary(memory[framework]):>22}")
        ratio = statistics.median(speed["musicflax"]) / statistics.median(speed["torch"])
        print(f"{'':<10}{'':>11}  {'ratio':<10}{ratio:>12.2f}x musicflax / torch")


if __name__ == "__main__":
    main()
