"""Command line: ``dlsa-prod train | eval | info`` (click)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import DLSAError


class _Group(click.Group):
    """Print DLSAError subclasses as one line and exit 2, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DLSAError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="dlsa_prod")
def main():
    """DLSA (Dynamic Label Space Adjustment) for long-tailed recognition: train, evaluate, ship."""


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="run directory (default: output.dir)")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="overrides the config's device")
@click.option("--seed", type=int, help="overrides the config's seed")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key, e.g. gmflow.optim.lr=0.1")
@click.option("--force", is_flag=True, help="replace an existing output directory")
def train(config, out, device, seed, overrides, force):
    """Train DLSA (and the plain baseline classifiers) from CONFIG.yaml; print the metrics table."""
    from .config import load_config
    from .pipeline import run_training

    extra = list(overrides)
    if device:
        extra.append(f"device={device}")
    if seed is not None:
        extra.append(f"seed={seed}")
    cfg = load_config(config, extra)
    out = out or cfg.output.dir
    run_training(cfg, Path(out), force=force)


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--features", "feature_file", required=True, type=click.Path(path_type=Path),
              help="HDF5 or .npz file with features and labels")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write the metrics here")
def eval_cmd(run_dir, feature_file, device, json_out):
    """Re-score a trained run's models on any feature file."""
    import numpy as np

    from .data import read_features
    from .device import resolve_device
    from .evaluation import evaluate
    from .metrics import display_rows, format_table
    from .run_dir import load_run, write_json

    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    fs = read_features(feature_file, run.meta["num_classes"], run.meta["dim"])
    counts = np.asarray(run.meta["train_class_counts"])
    metrics = evaluate(run.model, run.baselines, fs, counts, dev, run.meta.get("many_shot", 100),
                       run.meta.get("few_shot", 20))
    click.echo(format_table(display_rows(metrics), f"{feature_file} ({len(fs)} samples, accuracy %)"))
    share = metrics["dlsa"]["routing_share"]
    click.echo("routing share (depth 1..%d, regular): %s" % (len(share) - 1, ", ".join(f"{100 * s:.1f}%" for s in share)))
    if json_out:
        write_json(Path(json_out), metrics)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="bundle directory (default RUN_DIR/bundle)")
@click.option("--layout", type=click.Choice(["fused", "staged", "both"]), default="both", show_default=True)
@click.option("--features", type=click.Path(path_type=Path), help="parity-gate features (default: the run's val split)")
@click.option("--trt", is_flag=True, help="also build TensorRT engines for the staged graphs (needs TensorRT + GPU)")
@click.option("--trt-batches", default="1,64,256", show_default=True, help="batch sizes for the TensorRT profile")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path),
              help="also write a Triton model repository for the fused graph here")
@click.option("--force", is_flag=True, help="replace an existing bundle")
def export(run_dir, out, layout, features, trt, trt_batches, triton_dir, force):
    """Export a trained run to an ONNX bundle (parity-gated); optionally TensorRT engines and Triton."""
    from .export.bundle import export_bundle
    from .logs import setup_logging

    setup_logging()
    out = out or Path(run_dir) / "bundle"
    layouts = ("fused", "staged") if layout == "both" else (layout,)
    if trt:  # fail before the (slow) export when TensorRT cannot run here
        from .export.tensorrt_build import batch_profile, import_tensorrt

        import_tensorrt()
        profile = batch_profile([int(b) for b in trt_batches.split(",")])
    manifest = export_bundle(run_dir, out, layouts, features, force)
    if trt:
        from .export.manifest import MANIFEST, sha256_file
        from .run_dir import write_json
        from .export.tensorrt_build import build_engines

        if "staged" not in manifest["layouts"]:
            raise DLSAError("--trt builds engines for the staged graphs: export with --layout staged or both")
        dims = {"x": manifest["input"]["dim"]}
        entry = build_engines(out, manifest["layouts"]["staged"]["stages"], dims, profile, out / "timing.cache")
        manifest["tensorrt"] = entry
        for e in entry["engines"].values():
            manifest["files"][e["file"]] = sha256_file(out / e["file"])
        write_json(out / MANIFEST, manifest)
    if triton_dir:
        from .export.triton import write_triton_repository

        click.echo(f"Triton model repository: {write_triton_repository(out, triton_dir)}")
    p = manifest["parity"]
    click.echo(f"bundle: {out}  parity: " + ", ".join(
        f"{lay} pred {p[lay]['pred_agreement']:.4f} exit {p[lay]['exit_agreement']:.4f} "
        f"max logit rel err {p[lay]['max_logit_rel_err']:.1e}" for lay in layouts))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1,8,64,256", show_default=True)
@click.option("--provider", "providers", multiple=True, default=["cpu"], show_default=True,
              help="cpu, cuda or tensorrt (repeatable)")
@click.option("--layout", type=click.Choice(["fused", "staged", "both"]), default="both", show_default=True)
@click.option("--warmup", default=1.0, show_default=True, help="seconds of warm-up per measurement")
@click.option("--duration", default=3.0, show_default=True, help="seconds measured per batch size and method")
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="run directory for the PyTorch eager baseline (default: the bundle's parent if it is a run)")
@click.option("--threads", default=0, help="intra-op threads (0 = library default)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def bench(bundle, batches, providers, layout, warmup, duration, run_dir, threads, json_out):
    """Latency/throughput of a bundle on ONNX Runtime, next to PyTorch eager, on validation samples."""
    from .bench import format_rows, run_bench

    layouts = ["fused", "staged"] if layout == "both" else [layout]
    if run_dir is None and (Path(bundle).parent / "meta.json").is_file():
        run_dir = Path(bundle).parent
    rows = run_bench(bundle, [int(b) for b in batches.split(",")], layouts, list(providers), warmup, duration,
                     run_dir, threads)
    click.echo(format_rows(rows))
    if json_out:
        Path(json_out).write_text(json.dumps(rows, indent=2))


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="default RUN_DIR/report")
@click.option("--features", type=click.Path(path_type=Path), help="evaluate on this feature file instead of the run's test split")
@click.option("--bins", default=10, show_default=True, help="frequency bins of the confusion matrix")
def report(run_dir, out, features, bins):
    """PNG plots and a markdown summary of a trained run (accuracy vs frequency, routing, thresholds)."""
    from .report import write_report

    path = write_report(run_dir, out, features, bins)
    click.echo(f"report: {path / 'report.md'}")


@main.command(name="evaluate-features")
@click.argument("feature_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML with gmflow / filter / regcls / data settings (default: built-in)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="write table.md, results.json, comparison.png here")
def evaluate_features(feature_dirs, config_file, device, out):
    """Compare feature sets (research-layout directories) by how well the flow filter separates head classes."""
    import yaml

    from .device import resolve_device
    from .feature_eval import DEFAULTS, evaluate_feature_set, format_feature_table, plot_feature_table
    from .logs import setup_logging
    from .run_dir import write_json

    setup_logging()
    base = yaml.safe_load(Path(config_file).read_text()) if config_file else dict(DEFAULTS)
    dev = resolve_device(device)
    rows = [evaluate_feature_set(Path(d), base, dev) for d in feature_dirs]
    table = format_feature_table(rows)
    click.echo(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table + "\n")
        write_json(out / "results.json", rows)
        plot_feature_table(rows, out / "comparison.png")
        click.echo(f"written to {out}")


@main.command()
def info():
    """Versions, devices and whether the native GMM ops are built."""
    import torch

    from . import __version__
    from .ops import native

    click.echo(f"dlsa_prod {__version__}")
    click.echo(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}, "
               f"GPU available: {torch.cuda.is_available()})")
    status = native.build_info()
    click.echo(f"native ops: {status}")
    try:
        import onnxruntime as ort

        click.echo(f"onnxruntime {ort.__version__} providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        click.echo("onnxruntime: not installed")
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    click.echo(f"CUDA fp32 matmul precision setting: {precision} (the GMM ops always use IEEE fp32)")


if __name__ == "__main__":
    main()
