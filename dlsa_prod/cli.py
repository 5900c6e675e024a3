"""Command line: ``dlsa-prod train | tune | eval | export | bench | report | evaluate-features | info`` (click)."""

from __future__ import annotations

import contextlib
import errno
import sys
from pathlib import Path

import click

from .backends import loadable
from .errors import DLSAError
from .precisions import ENGINE_PRECISIONS, TRAIN_PRECISIONS


class _Group(click.Group):
    """Print DLSAError subclasses and usage errors as one line and exit 2, without a traceback;
    Ctrl-C prints one line and exits 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DLSAError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted (nothing half-written was left behind)", err=True)
            sys.exit(130)
        except OSError as exc:  # a full disk, a read-only or vanished directory while writing
            if exc.errno == errno.EPIPE:  # output piped into `head`: main() exits quietly, as click does
                raise
            click.echo(f"error: {os_error_line(exc)}", err=True)
            sys.exit(2)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:  # click prints Usage / Try / Error on 3-4 lines
            if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `dlsa-prod`: the help
                click.echo(exc.ctx.get_help())
                sys.exit(0)
            command = exc.ctx.command_path if exc.ctx is not None else "dlsa-prod"
            click.echo(f"error: {exc.format_message().rstrip('.')} (see {command} --help)", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:  # Ctrl-C or end of input at a prompt, outside a command
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            from click.utils import PacifyFlushWrapper

            sys.stdout, sys.stderr = PacifyFlushWrapper(sys.stdout), PacifyFlushWrapper(sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the file, what happened, and that earlier outputs are unchanged."""
    from .run_dir import public_path

    where = f"{public_path(exc.filename)}: " if exc.filename else ""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where}{what} (nothing half-written was kept and earlier outputs are unchanged; free space and re-run)"
    return f"{where}{what}"


def _check_json_target(path: Path | None, inputs=()) -> None:
    """``--json FILE``: refuse before any work when FILE's directory does not exist, or FILE is one of
    the command's INPUTS (a run, bundle or feature file) or a file already inside one of them."""
    if path is None:
        return
    target = Path(path).resolve()
    if not target.parent.is_dir():
        raise DLSAError(f"{path}: its directory {target.parent} does not exist")
    for i in inputs:
        if i is not None and (target == Path(i).resolve() or (Path(i).resolve() in target.parents and target.exists())):
            raise DLSAError(f"{path}: is {'' if target == Path(i).resolve() else 'a file in '}{i}, an input of this "
                            f"command; write the JSON elsewhere")


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
@click.option("--seeds", "seeds_text", metavar="S1,S2,...",
              help="run the whole comparison once per seed (OUT/seed_<s>/) and report mean +- std")
@click.option("--force", is_flag=True, help="replace an existing output directory")
@click.option("--precision", type=click.Choice(TRAIN_PRECISIONS), help="overrides the config's training precision")
@click.option("--tensorboard", is_flag=True, help="also write a TensorBoard log to RUN/tensorboard (output.tensorboard)")
def train(config, out, device, seed, overrides, seeds_text, force, precision, tensorboard):
    """Train DLSA (and the plain baseline classifiers) from CONFIG.yaml; print the metrics table."""
    from .config import load_config
    from .pipeline import run_training
    from .run_dir import check_replaceable
    from .seeds import parse_seeds

    extra = list(overrides)
    if device:
        extra.append(f"device={device}")
    if seed is not None:
        extra.append(f"seed={seed}")
    if precision:
        extra.append(f"precision={precision}")
    if tensorboard:
        extra.append("output.tensorboard=true")
    cfg = load_config(config, extra)
    out = Path(out or cfg.output.dir)
    seeds = parse_seeds(seeds_text) if seeds_text is not None else cfg.seeds
    if seeds and seed is not None:
        from .errors import ConfigError

        where = "--seeds" if seeds_text else "the config's seeds"
        raise ConfigError(f"--seed {seed} with {where} {seeds}: every seed of the list is run; give one of the two"
                          + ("" if seeds_text else " (a single run: --set seeds=null)"))
    if seeds:
        from .seeds import run_seeds

        check_replaceable(out, "seeds", [config, *cfg.input_paths()], force)
        run_seeds(cfg, out, seeds, force=force)
        return
    check_replaceable(out, "run", [config, *cfg.input_paths()], force)  # refuse before any work
    run_training(cfg, out, force=force)


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="tune directory (default: output.dir + '_tune')")
@click.option("--candidates", default=8, show_default=True, type=click.IntRange(min=1), help="configurations tried (the config itself is one)")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), help="overrides the config's device")
@click.option("--seed", type=int, help="overrides the config's seed")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")
def tune(config, out, candidates, device, seed, overrides):
    """Choose depth, K, llh_proportion, classifier loss/type/sampler on val only (resumable)."""
    from .config import load_config
    from .tune import run_tune

    extra = list(overrides) + ([f"device={device}"] if device else []) + ([f"seed={seed}"] if seed is not None else [])
    cfg = load_config(config, extra)
    run_tune(cfg, Path(out or f"{cfg.output.dir}_tune"), candidates)


@main.command(name="eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--features", "feature_file", type=click.Path(path_type=Path),
              help="HDF5 or .npz file with features and labels (default: the run's own test split)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write the metrics here")
def eval_cmd(run_dir, feature_file, device, json_out):
    """Re-score a trained run's models on its own test split or on any feature file."""
    import numpy as np

    from .data import read_features
    from .device import resolve_device
    from .evaluation import evaluate, input_guard_warning
    from .metrics import display_rows, format_table, run_shot_thresholds
    from .run_data import load_run_splits
    from .run_dir import load_run, write_json

    from .seeds import check_not_seeds_dir

    _check_json_target(json_out, [run_dir, feature_file])
    check_not_seeds_dir(run_dir)
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    if feature_file is not None:
        fs, name = read_features(feature_file, run.meta["num_classes"], run.meta["dim"]), str(feature_file)
    else:
        try:
            fs, name = load_run_splits(run).test, f"{run_dir} test split"
        except DLSAError as exc:
            raise DLSAError(f"cannot read the run's test split ({exc}); pass --features FILE") from None
    counts = np.asarray(run.meta["train_class_counts"])
    warning = input_guard_warning(run.model, run.meta, fs.features, dev, name)
    if warning:
        click.echo(warning, err=True)
    metrics = evaluate(run.model, run.baselines, fs, counts, dev, *run_shot_thresholds(run.meta))
    click.echo(format_table(display_rows(metrics), f"{name} ({len(fs)} samples, accuracy %)"))
    share = metrics["dlsa"]["routing_share"]
    click.echo("routing share (depth 1..%d, regular): %s" % (len(share) - 1, ", ".join(f"{100 * s:.1f}%" for s in share)))
    if json_out:
        write_json(Path(json_out), metrics)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="bundle directory (default RUN_DIR/bundle)")
@click.option("--layout", type=click.Choice(["fused", "staged", "both"]), default="both", show_default=True)
@click.option("--features", type=click.Path(path_type=Path), help="parity-gate features (default: the run's val split)")
@click.option("--best", is_flag=True, help="export the model meta.json names best on validation (DLSA or a baseline)")
@click.option("--trt", is_flag=True, help="also build native TensorRT engines (needs the staged layout, TensorRT, a GPU)")
@click.option("--trt-batches", default="1,64,256", show_default=True,
              help="batch sizes for the TensorRT profile, or a profile name: online, batch, offline")
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS), default="fp32", show_default=True,
              help="TensorRT engine precision (fp32 clears TensorRT's TF32 flag)")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path),
              help="also write a Triton model repository for the fused graph here")
@click.option("--triton-tensorrt", is_flag=True, help="Triton config: add the TensorRT execution accelerator")
@click.option("--accept-precision-loss", is_flag=True,
              help="write tf32/fp16 engines even when they fail the precision gate (exit agreement >= 99.5%, "
                   "val accuracy drop <= 0.5 points)")
@click.option("--force", is_flag=True,
              help="replace an existing bundle / Triton model directory (only ones dlsa-prod wrote)")
def export(run_dir, out, layout, features, best, trt, trt_batches, precision, triton_dir, triton_tensorrt,
           accept_precision_loss, force):
    """Export a trained run to an ONNX bundle (parity-gated); optionally TensorRT engines and Triton."""
    from .export.command import export_command
    from .logs import setup_logging
    from .seeds import check_not_seeds_dir

    check_not_seeds_dir(run_dir)
    setup_logging()
    for line in export_command(run_dir, out, layout, features, best, trt, trt_batches, precision, triton_dir,
                               triton_tensorrt, force, accept_precision_loss):
        click.echo(line)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch", "batches", default="1,8,64,256", show_default=True,
              help="comma-separated batch sizes, or a profile name: online, batch, offline")
@click.option("--backend", "backends", multiple=True, default=["onnxruntime"], show_default=True,
              type=click.Choice(loadable()), help="repeatable")
@click.option("--provider", "providers", multiple=True, default=["cpu"], show_default=True,
              help="ONNX Runtime provider: cpu, cuda or tensorrt")
@click.option("--allow-fallback", is_flag=True, help="accept ONNX Runtime falling back to another provider")
@click.option("--accept-precision-loss", is_flag=True,
              help="run ONNX Runtime's TensorRT provider even when it fails the precision gate")
@click.option("--layout", type=click.Choice(["fused", "staged", "single", "both"]), default=None,
              help="default: every layout the bundle has")
@click.option("--warmup", default="1.0", show_default=True, help="seconds of warm-up per measurement")
@click.option("--duration", default="3.0", show_default=True, help="seconds measured per batch size and method")
@click.option("--run", "run_dir", type=click.Path(path_type=Path),
              help="run directory for the PyTorch eager baseline (default: the bundle's parent if it is a run)")
@click.option("--threads", default="0", show_default=True,
              help="intra-op threads for ONNX Runtime and PyTorch alike (0 = the CPUs this process may use)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def bench(bundle, batches, backends, providers, allow_fallback, accept_precision_loss, layout, warmup, duration, run_dir,
          threads, json_out):
    """Latency/throughput of a bundle per backend and layout, next to PyTorch eager, on validation samples."""
    from .bench import bench_command

    _check_json_target(json_out, [bundle, run_dir])
    rows, _text = bench_command(bundle, batches, providers, layout, warmup, duration, run_dir, threads, backends,
                                allow_fallback, echo=click.echo,  # each row printed as it finishes
                                accept_precision_loss=accept_precision_loss)
    if json_out:
        from .run_dir import write_json

        write_json(Path(json_out), rows)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="default RUN_DIR/report")
@click.option("--features", type=click.Path(path_type=Path), help="evaluate on this feature file instead of the run's test split")
@click.option("--bins", default=10, show_default=True, type=int,
              help="frequency bins of the confusion matrix")
@click.option("--force", is_flag=True, help="replace an existing report directory (only one dlsa-prod wrote)")
def report(run_dir, out, features, bins, force):
    """PNG plots and a markdown summary of a trained run (accuracy vs frequency, routing, thresholds)."""
    from .report import write_report
    from .seeds import check_not_seeds_dir

    check_not_seeds_dir(run_dir)
    path = write_report(run_dir, out, features, bins, force=force)
    click.echo(f"report: {path / 'report.md'}")


@main.command(name="evaluate-features")
@click.argument("feature_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML with gmflow / filter / regcls / data settings (default: built-in)")
@click.option("--device", default="cpu", type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="write table.md, results.json, comparison.png here")
@click.option("--force", is_flag=True, help="replace an existing --out directory (only one dlsa-prod wrote)")
def evaluate_features(feature_dirs, config_file, device, out, force):
    """Compare feature sets (research-layout directories) by how well the flow filter separates head classes."""
    from .config import read_config_tree
    from .device import resolve_device
    from .feature_eval import DEFAULTS, evaluate_feature_set, format_feature_table, plot_feature_table
    from .logs import setup_logging
    from .run_dir import StagingDir, write_json

    setup_logging()
    base = read_config_tree(config_file) if config_file else dict(DEFAULTS)
    staging = None
    if out:  # refused before any work unless new, or (--force) an earlier feature comparison
        staging = StagingDir(Path(out), force=force, kind="feature-eval", protected_paths=[*feature_dirs, config_file])
    with staging or contextlib.nullcontext():
        dev = resolve_device(device)
        rows = [evaluate_feature_set(Path(d), base, dev) for d in feature_dirs]
        table = format_feature_table(rows)
        click.echo(table)
        if staging is not None:
            (staging.path / "table.md").write_text(table + "\n")
            write_json(staging.path / "results.json", rows)
            plot_feature_table(rows, staging.path / "comparison.png")
            staging.commit()
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
