"""Waveform VQ-VAEs side by side: musicflax's laptop config vs Jukebox's published settings,
same data (the sample set's rendered audio, 0.6 s windows, batch 8) and the same wall time.

    python benchmarks/audio_quality.py                     # 2 x 600 s of training + eval
    python benchmarks/audio_quality.py --seconds=1200 --root=/tmp/audio

Each entry trains for --seconds (`config.train_seconds`; or until its config's
num_train_steps, whichever comes first), is evaluated offline on the
validation split (`musicflax.eval`: loss, codebook, reconstruction with WAVs and
spectrograms of the first windows, and the pitch probe), and the table prints, per level:
bits/s, Jukebox's spectral convergence (dB), multi-resolution STFT distance, log-mel L1,
SI-SDR and the multi-pitch AP of a linear probe on the level's latents (beside the raw
spectrum's), with the steps trained and the whole command's wall time (start-up and the
final validation included). Finished entries are reused.
"""

from __future__ import annotations

import argparse
import os

from rate_distortion import REPO, evaluate, train

SAME_WINDOWS = ["--config.data.window_samples=9600", "--config.data.train_hop_frames=15",
                "--config.batch_size=8"]
ENTRIES = {
    "musicflax_laptop": ("configs/waveform_laptop.py", [], 0),
    "jukebox_settings": ("configs/jukebox.py", SAME_WINDOWS, 0),
}


def rows(name: str, report: dict, seconds: float) -> list[dict]:
    recon, probe = report["reconstruction"], report["probes"]["pitch"]
    out = []
    for level in sorted(k for k in report["codebook"] if k.startswith("level")):
        prefix = "" if level == "level0" else f"{level}/"
        out.append({"entry": name, "level": level,
                    "bits": report["codebook"][level]["bitrate_max"],
                    "sc_db": recon[f"{prefix}spectral_convergence_db"],
                    "mr_stft": recon[f"{prefix}mr_stft"],
                    "log_mel": recon[f"{prefix}log_mel_l1"],
                    "si_sdr": recon[f"{prefix}si_sdr_db"],
                    "pitch_ap": probe[f"{level}_average_precision"],
                    "raw_ap": probe["raw_spectrum_average_precision"],
                    "step": report["step"], "seconds": seconds})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--root", default=os.path.join(REPO, "workdirs", "audio_quality"))
    args = parser.parse_args()
    table = []
    for name in args.entries.split(","):
        config, overrides, steps = ENTRIES[name]
        # Validation only when the budget is spent (it takes ~80 s on the laptop config).
        budget = [f"--config.train_seconds={args.seconds}", "--config.eval_every=1000000"]
        seconds = train(args.root, name, (config, overrides + budget, steps))
        report = evaluate(args.root, name, only=("loss", "codebook", "reconstruction",
                                                 "probes"),
                          flags=("--config.evals.reconstruction.figures=2",))
        table.extend(rows(name, report, seconds))
    print(f"\n{'entry':<18}{'level':<8}{'bits/s':>8}{'SC dB':>8}{'MR-STFT':>9}{'log-mel':>9}"
          f"{'SI-SDR':>8}{'pitch AP':>9}{'raw AP':>8}{'steps':>7}{'wall s':>8}")
    for r in table:
        print(f"{r['entry']:<18}{r['level']:<8}{r['bits']:>8.0f}{r['sc_db']:>8.2f}"
              f"{r['mr_stft']:>9.3f}{r['log_mel']:>9.3f}{r['si_sdr']:>8.2f}"
              f"{r['pitch_ap']:>9.3f}{r['raw_ap']:>8.3f}{r['step']:>7}{r['seconds']:>8.0f}")
    print(f"(validation split of the sample set's rendered audio; {args.seconds:.0f} s of "
          "training each (config.train_seconds); wall s: the whole command; 2 CPUs)")


if __name__ == "__main__":
    main()
