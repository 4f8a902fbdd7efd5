"""Reports what a VQ-VAE's latents capture (and how well a prior models them), offline.

    python -m musicflax.eval --config=configs/eval.py --workdir=DIR [--step=N]
        [--split=train|validation|test] [--config.evals.prior.workdir=PRIOR_DIR[,UPSAMPLER,...]]
        [--config.data.source=OTHER_ROOT --config.data.split_scheme=hash ...]

Runs the evaluators of the eval config (the same plug-ins training validates with) and
writes DIR/eval/<step>/<split>/report.json (DIR/eval/<step>/<dataset>/<split>/ for data other
than the run's own; a second report of the same kind goes to <split>.2/, never over the
first), PNG figures and note files beside it, and TensorBoard scalars/images
(<split>/<evaluator>/<key>, the keys training logs as validation/<evaluator>/<key>). Every
number is over the whole split. The model is replicated over all local devices and each batch
is split over them (one CPU works too).
"""

from __future__ import annotations

import json
import math

import jax
import ml_collections
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

# Data fields an evaluation may point elsewhere; the rest must stay as the model was trained.
DATA_OVERRIDES = ("source", "tfds_data_dir", "split_scheme", "split_lists",
                  "validation_fraction", "test_fraction", "instrument_groups", "audio_source",
                  "soundfont", "on_bad_row")


def data_for_eval(trained: ml_collections.ConfigDict,
                  overrides: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    """The run's data config with the eval config's non-empty `data` fields applied.

    Windows must look as the model was trained on: the representation, rates and window
    length cannot be overridden, and other instrument groups must keep the channel count.
    """
    from musicflax.data import instruments, musicnet  # pylint: disable=g-import-not-at-top
    data = ml_collections.ConfigDict(trained.to_dict())
    for key, value in (overrides or {}).items():
        if not value:  # empty: as trained
            continue
        if key not in DATA_OVERRIDES:
            raise musicnet.DataError(f"data.{key} cannot change at evaluation: the checkpoint "
                                     f"was trained with data.{key}={trained.get(key)!r}")
        data[key] = value
    before = instruments.InstrumentGroups.parse(trained.instrument_groups)
    after = instruments.InstrumentGroups.parse(data.instrument_groups)
    if len(after.names) != len(before.names):
        raise musicnet.DataError(f"data.instrument_groups={data.instrument_groups!r} has "
                                 f"{len(after.names)} groups; the model was trained on "
                                 f"{len(before.names)} ({trained.instrument_groups!r})")
    return data


def open_priors(eval_config, vqvae_run):
    """The priors the prior-related evaluators read (a prior, or a hierarchy of them given as
    a comma-separated list, coarsest first), checked to be built on this VQ-VAE step."""
    from musicflax.eval import context  # pylint: disable=g-import-not-at-top
    from musicflax.train import run  # pylint: disable=g-import-not-at-top
    workdirs = {eval_config.evals[k].workdir for k in ("prior", "generated")
                if k in eval_config.evals and eval_config.evals[k].get("workdir")}
    if not workdirs:
        return ()
    if len(workdirs) > 1:
        raise app.UserError(f"evals.prior.workdir and evals.generated.workdir name different "
                            f"priors ({sorted(workdirs)}); give one")
    hierarchy = run.open_hierarchy([w for w in workdirs.pop().split(",") if w])
    for prior in hierarchy.runs:
        pinned = prior.task.vqvae
        if pinned.workdir != vqvae_run.workdir or \
                int(pinned.state.step) != int(vqvae_run.state.step):
            raise app.UserError(f"the prior in {prior.workdir} was trained on step "
                                f"{int(pinned.state.step)} of {pinned.workdir}; evaluate that "
                                f"(--workdir={pinned.workdir} --step={int(pinned.state.step)})")
    return tuple(context.PriorRun(p.task, p.state, run.Runner(p.mesh, p.state_sharding),
                                  p.workdir) for p in hierarchy.runs)


def new_folder(base):
    """`base`, or base.2, base.3, ... if a report is already there: nothing is overwritten."""
    folder, n = base, 1
    while (folder / "report.json").exists():
        n += 1
        folder = base.parent / f"{base.name}.{n}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _plain(value):
    """numpy scalars and arrays -> JSON numbers and lists."""
    return value.tolist() if hasattr(value, "tolist") else float(value)


def main(argv):
    del argv
    from musicflax.data import input_pipeline  # pylint: disable=g-import-not-at-top
    from musicflax.eval import context, evaluators  # pylint: disable=g-import-not-at-top
    from musicflax.train import identity, run  # pylint: disable=g-import-not-at-top

    eval_config = _CONFIG.value
    evaluators.check(eval_config.evals)
    workdir = run.absolute(_WORKDIR.value)
    config = run.load_config(workdir)
    if config.task not in ("vqvae", "score_audio"):
        raise app.UserError(f"{workdir} holds a {config.task!r} run; evaluate the VQ-VAE "
                            "workdir and pass the prior as --config.evals.prior.workdir")
    evaluated = ml_collections.ConfigDict(config.to_dict())
    evaluated.data = data_for_eval(config.data, eval_config.get("data"))
    # A run older than `config.encode` encoded by nearest codes (configs/default.py's values).
    encode = {"search_candidates": 0, "search_sweeps": 2, **config.get("encode", {})}
    encode.update({k: v for k, v in eval_config.get("encode", {}).items() if v >= 0})
    evaluated.encode = encode
    devices = jax.local_devices()
    vqvae = run.open_run(workdir, _STEP.value, config=evaluated, devices=devices)
    step = int(vqvae.state.step)
    priors = open_priors(eval_config, vqvae)
    builder = vqvae.task.builder
    folder = workdir / "eval" / str(step)
    if input_pipeline.get_builder(config.data).info.full_name != builder.info.full_name:
        folder = folder / builder.builder_config.name
    out_dir = new_folder(folder / _SPLIT.value)
    batch_size = math.ceil(eval_config.batch_size / len(devices)) * len(devices)
    ctx = context.Context(vqvae.task, vqvae.state, run.Runner(vqvae.mesh, vqvae.state_sharding),
                          _SPLIT.value, step, batch_size, out_dir=out_dir, priors=priors)
    windows = ctx.windows
    data = evaluated.data
    report = {
        "workdir": str(workdir), "step": step, "split": _SPLIT.value,
        "data": input_pipeline.dataset_record(builder),
        "config_hash": identity.config_hash(config), "seed": eval_config.seed,
        "representation": data.representation, "frame_rate": data.frame_rate,
        "sample_rate": data.sample_rate if data.representation == "waveform" else None,
        "window_frames": windows.window, "window_seconds": windows.window / data.frame_rate,
        "split_ids": windows.data.ids.tolist(), "windows": len(windows),
        "encode": evaluated.encode.to_dict(),
    }
    for name, section in evaluators.evaluate(ctx, eval_config.evals).items():
        logging.info("evaluator %s done", name)
        report[name] = section
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=_plain))
    scalars = evaluators.flat_scalars({k: v for k, v in report.items() if isinstance(v, dict)
                                       and k != "data"})
    if jax.process_index() == 0:
        writer = metric_writers.create_default_writer(out_dir, asynchronous=False)
        writer.write_scalars(step, {f"{_SPLIT.value}/{k}": v for k, v in scalars.items()})
        if ctx.images:
            writer.write_images(step, {k: v[None] for k, v in ctx.images.items()})
        writer.close()
    print(f"report: {out_dir / 'report.json'}")
    for name, value in scalars.items():
        print(f"  {name:<56} {value:.4f}")


if __name__ == "__main__":
    app.run(main)
