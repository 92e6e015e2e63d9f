"""The ``fnatune`` command line. Commands only parse arguments and print; the work lives in the library."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import click

from fnatune.errors import FnatuneError


class _Group(click.Group):
    """Turns our own errors into one clear line (exit 2) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FnatuneError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)


def _parse_input(value: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in value.lower().replace("*", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise click.BadParameter(f"expected HxW such as 1024x2048 (or one number for a square), got '{value}'")
    return parts[0], parts[1]


def _parse_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``("a=1", "b=0.5", "c=x")`` -> ``{"a": 1, "b": 0.5, "c": "x"}`` (Python literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint="--seed-option")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fnatune")
def main() -> None:
    """FNA++ network adaptation: remap a pretrained seed, search, derive, fine-tune."""


@main.command()
@click.argument("name", required=False)
def spaces(name: str | None) -> None:
    """List the registered search spaces, or describe space NAME."""
    from fnatune.space import get_space, list_spaces

    if name:
        click.echo(get_space(name).describe())
        return
    for n in list_spaces():
        sp = get_space(n)
        click.echo(f"{n:<14} {len(sp.searchable_layers()):>2} searchable layers, {sp.size():9.3g} archs  {sp.description}")


@main.command()
def seeds() -> None:
    """List the seed families that can be loaded."""
    from fnatune.seeds import describe_seed, list_seeds

    for n in list_seeds():
        click.echo(f"{n:<14} {describe_seed(n)}")


@main.command()
@click.option("--seed", "seed_name", required=True, help="Seed family, e.g. mobilenet_v2 (see `fnatune seeds`).")
@click.option("--weights", default=None, help="Local checkpoint path, or a torchvision weights name (needs internet).")
@click.option("--seed-option", "seed_options", multiple=True, metavar="KEY=VALUE",
              help="Option of the seed's model builder, e.g. width_mult=0.75 (mobilenet_v2) or alpha=1.2 (mnasnet).")
@click.option("--space", "space_name", default=None, help="Target search space (see `fnatune spaces`).")
@click.option("--arch", "arch_spec", default="supernet", show_default=True,
              help="seed (the seed's layout in the space), uniform (a random arch), supernet (every candidate), "
                   "or PATH.json.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for weights.pt, remap_report.json and arch.json.")
@click.option("--width", type=click.Choice(["index", "bn_gamma"]), default="index", show_default=True,
              help="Width rule: first k channels, or the k with the largest BN |gamma|.")
@click.option("--kernel", type=click.Choice(["centre", "dilation"]), default="centre", show_default=True,
              help="Kernel rule for larger kernels: centre placement or a dilated lattice.")
@click.option("--noise/--no-noise", default=False, show_default=True,
              help="FNA++: new conv entries get 1e-5 x Kaiming-uniform noise instead of exact zeros.")
@click.option("--sample-seed", default=0, show_default=True, help="Random seed for --arch uniform and the noise.")
def remap(seed_name: str, weights: str | None, seed_options: tuple[str, ...], space_name: str | None, arch_spec: str,
          out_dir: Path, width: str, kernel: str, noise: bool, sample_seed: int) -> None:
    """Remap a seed's parameters into a super net or an architecture (always from the seed)."""
    from fnatune.arch import Arch
    from fnatune.io import atomic_torch_save
    from fnatune.remap import RemapOptions
    from fnatune.remap import remap as do_remap
    from fnatune.seeds import load_seed
    from fnatune.space import get_space

    seed = load_seed(seed_name, weights=weights, **_parse_options(seed_options))
    space = get_space(space_name) if space_name else None
    target: Any
    if arch_spec in ("seed", "uniform", "supernet"):
        if space is None and arch_spec != "seed":
            raise click.UsageError(f"--arch {arch_spec} needs --space")
        if arch_spec == "seed":
            target = space.project(seed.arch) if space else seed.arch
        elif arch_spec == "uniform":
            target = space.sample(sample_seed)
        else:
            target = space
    else:
        target = Arch.load(arch_spec)
        if space is not None:
            space.validate(target)
    options = RemapOptions(width=width, kernel=kernel, noise=noise, seed=sample_seed)  # type: ignore[arg-type]
    module, report = do_remap(seed, target, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(module.state_dict(), out_dir / "weights.pt")
    report.save(out_dir / "remap_report.json")
    if isinstance(target, Arch):
        target.save(out_dir / "arch.json")
    click.echo(report.summary())
    click.echo(f"seed: {seed.source}")
    click.echo(f"wrote {out_dir / 'weights.pt'}, {out_dir / 'remap_report.json'}"
               + (f", {out_dir / 'arch.json'}" if isinstance(target, Arch) else ""))


@main.command()
@click.option("--arch", "arch_path", required=True, type=click.Path(path_type=Path), help="Arch JSON file.")
@click.option("--task", default="backbone", show_default=True, help="Whole network to count: backbone, cls, ...")
@click.option("--input", "input_size", required=True, help="Input size HxW, e.g. 800x1088.")
@click.option("--num-classes", default=None, type=int, help="Classes of the task head (task default if omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with params and madds.")
def cost(arch_path: Path, task: str, input_size: str, num_classes: int | None, as_json: bool) -> None:
    """Parameters and multiply-adds of an architecture (conv + linear, batch 1, as FNA counts)."""
    from fnatune.arch import Arch
    from fnatune.cost import count_madds, count_params
    from fnatune.tasks import build_task_model

    size = _parse_input(input_size)
    arch = Arch.load(arch_path)
    model = build_task_model(task, arch, **({"num_classes": num_classes} if num_classes else {}))
    params, madds = count_params(model), count_madds(model, size, arch.skeleton.in_channels)
    if as_json:
        click.echo(json.dumps({"arch": str(arch_path), "task": task, "input": list(size),
                               "params": params, "madds": madds}))
    else:
        click.echo(f"{arch_path} [{task}] at {size[0]}x{size[1]}: {params / 1e6:.3f}M params, "
                   f"{madds / 1e9:.3f}B MAdds")
