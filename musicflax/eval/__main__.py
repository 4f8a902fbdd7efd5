"""Reports what a VQ-VAE's latents capture (and how well a prior models them).

    python -m musicflax.eval --config=configs/eval.py --workdir=DIR [--step=N]
        [--split=train|validation|test] [--config.evals.prior.workdir=PRIOR_DIR]
        [--config.data.source=OTHER_ROOT --config.data.split_scheme=hash ...]

Writes DIR/eval/<step>/<split>/report.json (DIR/eval/<step>/<dataset>/<split>/ for data
other than the run's own), PNG figures beside it, and TensorBoard scalars/images in the same
folder. Every number is over the whole split. The model is replicated over all local devices
and each batch is split over them (one CPU works too).
"""

from __future__ import annotations

import json

import jax
from absl import flags, logging
from clu import metric_writers
from ml_collections import config_flags

from musicflax import app

_CONFIG = config_flags.DEFINE_config_file("config", "configs/eval.py", "Eval config.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "The VQ-VAE workdir to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_SPLIT = flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Split.")
flags.mark_flags_as_required(["workdir"])


def _plain(value):
    """numpy scalars and arrays -> JSON numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else float(value)


def flat_scalars(tree, prefix="") -> dict[str, float]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def main(argv):
    del argv
    from musicflax.eval import evaluators  # pylint: disable=g-import-not-at-top
    from musicflax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    from musicflax.train import codes, sharding, trainer  # pylint: disable=g-import-not-at-top

    eval_config = _CONFIG.value
    # Replicated over every local device; each pass splits its batches over them.
    devices = jax.local_devices()
    config, task, state = trainer.load_state(_WORKDIR.value, _STEP.value, devices=devices)
    if config.task != "vqvae":
        raise app.UserError(f"{_WORKDIR.value} holds a {config.task!r} run; evaluate the "
                            "VQ-VAE workdir and pass the prior as --config.evals.prior.workdir")
    step = int(state.step)
    data = evaluators.data_for_eval(config.data, eval_config.get("data"))
    builder = input_pipeline.get_builder(data)
    out_dir = trainer.absolute(_WORKDIR.value) / "eval" / str(step)
    if input_pipeline.get_builder(config.data).info.full_name != builder.info.full_name:
        out_dir = out_dir / builder.builder_config.name
    out_dir = out_dir / _SPLIT.value
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = evaluators.Context(config, eval_config, task, state, _SPLIT.value, out_dir,
                             mesh=sharding.make_mesh(1, devices), data=data)
    ctx.builder = builder
    windows = ctx.windows
    report = {
        "workdir": str(trainer.absolute(_WORKDIR.value)), "step": step, "split": _SPLIT.value,
        "data": input_pipeline.dataset_record(builder),
        "config_hash": codes.config_hash(config), "seed": eval_config.seed,
        "representation": data.representation, "frame_rate": data.frame_rate,
        "sample_rate": data.sample_rate if data.representation == "waveform" else None,
        "window_frames": windows.window, "window_seconds": windows.window / data.frame_rate,
        "split_ids": windows.data.ids.tolist(), "windows": len(windows),
    }
    unknown = set(eval_config.evals) - set(evaluators.EVALUATORS)
    if unknown:
        raise app.UserError(f"unknown evaluators {sorted(unknown)}; known: "
                            f"{list(evaluators.EVALUATORS)}")
    for name in evaluators.EVALUATORS:  # a fixed order: later sections reuse earlier passes
        settings = eval_config.evals.get(name)
        if settings is None or not settings.get("enabled", True):
            continue
        logging.info("evaluator %s", name)
        report[name] = evaluators.EVALUATORS[name](ctx, settings)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    if jax.process_index() == 0:
        writer = metric_writers.create_default_writer(out_dir, asynchronous=False)
        writer.write_scalars(step, flat_scalars(
            {k: v for k, v in report.items() if isinstance(v, dict)}))
        if ctx.images:
            writer.write_images(step, {k: v[None] for k, v in ctx.images.items()})
        writer.close()
    print(f"report: {out_dir / 'report.json'}")
    for name, value in flat_scalars({k: v for k, v in report.items()
                                     if isinstance(v, dict)}).items():
        print(f"  {name:<48} {value:.4f}")


if __name__ == "__main__":
    app.run(main)
