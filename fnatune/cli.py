"""The ``fnatune`` command line. Commands only parse arguments and print; the work lives in the library."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any, get_args

import click

from fnatune.config.sections import WidthRule
from fnatune.errors import FnatuneError
from fnatune.rundir import RunDir


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
    names = list_spaces()
    width = max(map(len, names))
    for n in names:
        sp = get_space(n)
        click.echo(f"{n:<{width}} {len(sp.searchable_layers()):>2} searchable layers, {sp.size():9.3g} archs  "
                   f"{sp.description}")


@main.command()
def seeds() -> None:
    """List the seed families that can be loaded."""
    from fnatune.seeds import describe_seed, list_seeds

    names = list_seeds()
    width = max(map(len, names))
    for n in names:
        click.echo(f"{n:<{width}} {describe_seed(n)}")


@main.command()
def tasks() -> None:
    """List the registered tasks: headline metric, default space, what each adapts a backbone to."""
    from fnatune.config import validate
    from fnatune.tasks import get_task, list_tasks

    for n in list_tasks():
        t = get_task(n)
        raw = {"name": "list", "task": n, **({t.section: {}} if t.section and t.section_required else {})}
        space = validate(raw).space
        backends = ", ".join(b + ("" if t.available(b) else f" [needs {', '.join(t.requires(b))}]") for b in t.backends)
        click.echo(f"{n:<6} metric {t.metric:<9} space {space:<13} {t.description}; backends: {backends}")


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
@click.option("--width", type=click.Choice(list(get_args(WidthRule))), default="index", show_default=True,
              help="Width rule: first k channels, or the k with the largest BN |gamma|, filter std or L1 norm.")
@click.option("--kernel", type=click.Choice(["centre", "dilation"]), default="centre", show_default=True,
              help="Kernel rule for larger kernels: centre placement or a dilated lattice.")
@click.option("--group", type=click.Choice(["block_diagonal", "leading"]), default="block_diagonal", show_default=True,
              help="Group rule for convs of other groups (ResNet spaces): the block diagonal, or each group's first inputs.")
@click.option("--noise/--no-noise", default=False, show_default=True,
              help="FNA++: new conv entries get 1e-5 x Kaiming-uniform noise instead of exact zeros.")
@click.option("--sample-seed", default=0, show_default=True, help="Random seed for --arch uniform and the noise.")
def remap(seed_name: str, weights: str | None, seed_options: tuple[str, ...], space_name: str | None, arch_spec: str,
          out_dir: Path, width: str, kernel: str, group: str, noise: bool, sample_seed: int) -> None:
    """Remap a seed's parameters into a super net or an architecture (always from the seed)."""
    from fnatune.arch import Arch
    from fnatune.io import atomic_torch_save
    from fnatune.remap import RemapOptions
    from fnatune.remap import remap as do_remap
    from fnatune.seeds import load_seed
    from fnatune.space import get_space, load_arch

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
        target = load_arch(arch_spec)
        if space is not None:
            space.validate(target)
    options = RemapOptions(width=width, kernel=kernel, group=group, noise=noise, seed=sample_seed)
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
@click.option("--arch", "arch_spec", required=True,
              help="An arch JSON file, or a seed name (its own layout, e.g. resnet50; see `fnatune seeds`).")
@click.option("--task", default="backbone", show_default=True,
              help="Whole network to count: backbone, cls (the seed's classifier) or a task (seg, det, ...).")
@click.option("--detector", type=click.Choice(["retinanet", "ssdlite"]), default=None,
              help="With --task det: the detector around the backbone (default retinanet).")
@click.option("--input", "input_size", required=True, help="Input size HxW, e.g. 800x1088.")
@click.option("--num-classes", default=None, type=int, help="Classes of the task head (task default if omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with params and madds.")
@click.option("--latency/--no-latency", default=False, show_default=True,
              help="Also time the whole network on --device (median of --repeats, batch 1).")
@click.option("--device", default="cpu", show_default=True, help="Device for --latency, e.g. cpu or cuda:0.")
@click.option("--repeats", default=10, show_default=True, type=int, help="Timed runs for --latency.")
@click.option("--lut", "lut_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A latency table (fnatune lut build) to predict the searchable part's latency from.")
def cost(arch_spec: str, task: str, detector: str | None, input_size: str, num_classes: int | None, as_json: bool,
         latency: bool, device: str, repeats: int, lut_path: Path | None) -> None:
    """Parameters, multiply-adds (conv + linear, batch 1, as FNA counts) and latency of an architecture."""
    import torch

    from fnatune.cost import count_madds, count_params
    from fnatune.latency import LatencyTable, device_name, time_module
    from fnatune.seeds import list_seeds, load_seed
    from fnatune.space import load_arch
    from fnatune.whole_network import whole_network

    size = _parse_input(input_size)
    if detector is not None and task != "det":
        raise click.UsageError(f"--detector is for --task det, not --task {task}")
    if arch_spec in list_seeds() and not Path(arch_spec).exists():
        arch = load_seed(arch_spec).arch  # the layout only: random init is enough to count
    else:
        arch = load_arch(arch_spec)
    model, forward_kwargs = whole_network(task, arch, num_classes, {"type": detector} if detector else None)
    params, madds = count_params(model), count_madds(model, size, arch.skeleton.in_channels, **forward_kwargs)
    out: dict[str, Any] = {"arch": arch_spec, "task": task, "input": list(size), "params": params, "madds": madds}
    if task == "det":
        out["detector"] = detector or "retinanet"
    if latency:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise click.UsageError(f"--device {device}: CUDA is not available on this machine")
        out["latency_ms"] = time_module(model, (1, arch.skeleton.in_channels, *size), torch.device(device),
                                        torch.float32, repeats=repeats)
        out["device"] = device_name(device)
    if lut_path is not None:
        table = LatencyTable.load(lut_path)
        out["lut_ms"] = {"searchable": table.of_arch(arch), "fixed": table.fixed_ms, "device": table.meta.get("device")}
    if as_json:
        click.echo(json.dumps(out))
        return
    what = f"{task}, {out['detector']}" if task == "det" else task
    click.echo(f"{arch_spec} [{what}] at {size[0]}x{size[1]}: {params / 1e6:.3f}M params, {madds / 1e9:.3f}B MAdds")
    if "latency_ms" in out:
        click.echo(f"  measured latency: {out['latency_ms']:.2f} ms on {out['device']} (median of {repeats})")
    if "lut_ms" in out:
        lut = out["lut_ms"]
        click.echo(f"  latency table ({lut['device']}): searchable {lut['searchable']:.2f} ms + fixed {lut['fixed']:.2f} ms")


@main.group()
def lut() -> None:
    """Latency look-up tables for latency-aware search."""


@lut.command("build")
@click.option("--space", "space_name", required=True, help="Search space name (see `fnatune spaces`).")
@click.option("--input", "input_size", default=None, help="Input size HxW (default: the space's task resolution).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--repeats", default=10, show_default=True, type=int, help="Timed runs per op (median reported).")
@click.option("--warmup", default=3, show_default=True, type=int)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where tables are cached (default ~/.cache/fnatune/lut or $FNATUNE_CACHE/lut).")
@click.option("--refresh", is_flag=True, help="Measure again even if a cached table exists.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table here.")
def lut_build(space_name: str, input_size: str | None, device: str, dtype: str, batch: int, repeats: int,
              warmup: int, cache_dir: Path | None, refresh: bool, out_path: Path | None) -> None:
    """Time every candidate op of a space at its real input shape and cache the table."""
    from fnatune.latency import latency_table
    from fnatune.nets import SuperNet
    from fnatune.space import get_space

    space = get_space(space_name)
    size = _parse_input(input_size) if input_size else space.input_size
    table = latency_table(SuperNet(space), size, device=device, dtype=dtype, batch=batch, warmup=warmup,
                          repeats=repeats, cache_dir=cache_dir, refresh=refresh)
    s = table.summary()
    click.echo(f"latency table: {space_name} at {size[0]}x{size[1]}, batch {batch}, {dtype} on {table.meta['device']}")
    click.echo(f"  {len(table.ms)} searchable layers; searchable min {s['min']:.2f} / uniform {s['uniform']:.2f} / "
               f"max {s['max']:.2f} ms; fixed part {s['fixed']:.2f} ms")
    click.echo(f"  {'read from cache' if table.meta.get('cached') else 'measured and cached'}: {table.meta['cache']}")
    if out_path is not None:
        table.save(out_path)
        click.echo(f"  wrote {out_path}")


def _default_run_dir(name: str) -> Path:
    import time

    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _run_facts(run: RunDir) -> list[str]:
    """The derived arch, its cost beside the seed's own arch, and the time each stage took (a single run)."""
    lines = []
    if run.arch_path.exists():
        from fnatune.arch import Arch

        lines.append(f"arch: {Arch.load(run.arch_path).block_string()}")
    ex = run.done("export").get("metrics", {})
    if ex.get("madds_paper_resolution") and ex.get("params"):
        line = f"cost: {ex['madds_paper_resolution'] / 1e9:.2f} GMAdds, {ex['params'] / 1e6:.2f}M params"
        if ex.get("seed_madds_paper_resolution") and ex.get("seed_params"):
            line += (f"; the seed's own arch: {ex['seed_madds_paper_resolution'] / 1e9:.2f} GMAdds, "
                     f"{ex['seed_params'] / 1e6:.2f}M params (whole network, the paper's resolution)")
        lines.append(line)
    done = sorted(run.path.glob(f"stages/*/{run.DONE}"), key=lambda p: p.stat().st_mtime)
    if done:
        times = [(p.parent.name, 3600.0 * float(run.done(p.parent.name).get("hours", 0.0))) for p in done]
        lines.append("time per stage: " + ", ".join(f"{n} {_duration(t)}" for n, t in times)
                     + f" (total {_duration(sum(t for _, t in times))})")
    return lines


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _tracking_lines(run: RunDir, uri: str, parent: str) -> None:
    """Where the run's MLflow pages are: the server's own address for a tracking server, ``fnatune ui``'s for a
    local store; and, when the store did not take everything, what waits and the command that sends it."""
    from fnatune.outbox import Outbox, outbox_of
    from fnatune.tracking import run_page, runs_table_page

    box = Outbox(outbox_of(run.path))
    parent = box.ids().get(parent, parent)
    click.echo(f"  MLflow: run {parent} in {uri}")
    waiting = box.size()
    if waiting:
        click.echo(f"  tracking: {waiting} record(s) did not reach {uri} (it did not answer); they wait in {box.dir}; "
                   f"send them with: fnatune sync {run.path}")
        return
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else "http://127.0.0.1:5000"
    page = run_page(uri, parent, base)
    if server:
        click.echo(f"  browse: {page or base}")
    else:
        click.echo(f"  browse: fnatune ui --tracking-uri {uri}" + (f", then {page}" if page else ""))
    table = runs_table_page(uri, parent, base)
    if table:
        click.echo(f"  all runs: {table}")


def _finish(run_dir: Path, result: dict[str, Any]) -> None:
    run = RunDir(run_dir)
    state = run.state()
    click.echo("")
    click.echo(f"results: {run_dir}")
    if run.arch_path.exists():
        click.echo(f"  derived architecture: {run.arch_path}")
    for path in run.summaries():
        click.echo(f"  {path.name:<21} {path}")
    ev = result.get("stages", {}).get("evaluate", {}).get("metrics", {})
    if ev:
        click.echo("  metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in ev.items()))
    for line in _run_facts(run):
        click.echo("  " + line)
    if result.get("table"):
        click.echo("\n" + result["table"])
    if state.get("tracking_uri"):  # empty when tracking is off
        _tracking_lines(run, state["tracking_uri"], state.get("parent_run") or "")
    failed = [r["name"] for r in result.get("rows", []) if str(r.get("status", "")).startswith("failed")]
    if failed:  # the table is the result, but a script chaining on our exit code must not go on
        raise FnatuneError(f"{len(failed)} of {len(result['rows'])} trials failed ({', '.join(failed)}); after "
                           f"fixing the cause: fnatune resume {run_dir}")


_ADDRESS = click.option("--address", default=None, metavar="HOST:PORT",
                        help="Join this Ray cluster (e.g. 127.0.0.1:6379, or auto). Default: $RAY_ADDRESS if "
                             "set (as inside a Ray job), else a local Ray on 127.0.0.1, started and stopped "
                             "for this run.")


def _check_tracking(cfg: Any, tracking_uri: str | None) -> None:
    """A tracking URI MLflow cannot use is refused here, before a run directory or Ray exists."""
    from fnatune.tracking import check_tracking_uri

    uri = tracking_uri or cfg.tracking.uri
    if uri and cfg.tracking.enabled:
        check_tracking_uri(uri)


def _execute(cfg: Any, run_dir: Path, source: str, tracking_uri: str | None, address: str | None, resume: bool) -> None:
    from fnatune.experiment import run_experiment

    try:
        result = run_experiment(cfg, run_dir, tracking_uri=tracking_uri, address=address, source=source, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: fnatune resume {run_dir}", err=True)
        sys.exit(130)
    except FnatuneError as e:
        if not RunDir(run_dir).exists() or "fnatune resume " in str(e):
            raise  # nothing to resume, or the line already says how
        raise FnatuneError(f"{e}\n(the run directory is kept; after fixing the cause: fnatune resume {run_dir})") from None
    _finish(run_dir, result)


@main.command()
@click.argument("pipeline", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set search.epochs=4 (repeatable; values are YAML).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the run writes everything (default: runs/<name>-<time> under the working directory).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///./mlflow.db).")
@_ADDRESS
def run(pipeline: Path, overrides: tuple[str, ...], run_dir: Path | None, tracking_uri: str | None,
        address: str | None) -> None:
    """Run an adaptation pipeline as Ray Tune trial(s): seed -> remap -> search -> derive -> remap -> fine-tune ->
    evaluate -> export (once, per variant, or per sweep trial)."""
    from fnatune.config import check_sweep_keys, load_config

    cfg = load_config(pipeline, list(overrides))
    check_sweep_keys(cfg, str(pipeline))
    _check_tracking(cfg, tracking_uri)
    run_dir = run_dir or _default_run_dir(cfg.name)
    with RunDir(run_dir).owned():  # first: a run working here now is named, not mistaken for a finished one
        if RunDir(run_dir).exists():
            raise FnatuneError(f"{run_dir} already holds a run; continue it with `fnatune resume {run_dir}` "
                               f"or choose another --run-dir")
        click.echo(f"fnatune run {pipeline} -> {run_dir}")
        _execute(cfg, run_dir, str(pipeline), tracking_uri, address, resume=False)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a setting before continuing, e.g. --set search.recompute_mixed=1 (repeatable). How the "
                   "run is carried out (device, resources, recomputation, workers) changes from the next step; "
                   "a setting of an unfinished stage restarts that stage; one of a finished stage is refused.")
@click.option("--tracking-uri", default=None, help="Override the tracking URI recorded in the run.")
@_ADDRESS
def resume(run_dir: Path, overrides: tuple[str, ...], tracking_uri: str | None, address: str | None) -> None:
    """Continue a killed or failed run: Tune restores its experiment, finished trials and stages are kept,
    the running ones continue from their last checkpoints."""
    from fnatune.reconfigure import apply_changes, plan_changes

    run = RunDir(run_dir)
    cfg = run.read_config()
    run.check()
    with run.owned():
        changes = []
        if overrides:
            cfg, changes = plan_changes(cfg, run, list(overrides))
        _check_tracking(cfg, tracking_uri)
        apply_changes(cfg, run, changes, f"{run.config_path}, changed at resume: {' '.join(overrides)}")
        for change in changes:
            click.echo(f"changed {change.describe()}")
        click.echo(f"fnatune resume {run_dir}")
        _execute(cfg, run_dir, str(run.config_path), tracking_uri, address, resume=True)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tracking-uri", default=None, help="Send to this store instead of the one the run recorded (the "
                                                   "same store at a new address).")
def sync(run_dir: Path, tracking_uri: str | None) -> None:
    """Send the tracking records that a run kept while its MLflow store did not answer (params, metrics, tags,
    artifacts, run ends), in the order they were made."""
    from fnatune.outbox import Outbox, outbox_of
    from fnatune.outbox import sync as deliver

    if tracking_uri:
        from fnatune.tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)
    box = Outbox(outbox_of(run_dir))
    sent, left, error = deliver(run_dir, tracking_uri)
    if not sent and not left:
        click.echo(f"{run_dir}: nothing waits to be sent")
        return
    uri = tracking_uri or box.store().get("uri")
    click.echo(f"sent {sent} record(s) to {uri}" + (f"; {box.failed()} refused by the store, kept in "
                                                     f"{box.dir / 'failed.jsonl'}" if box.failed() else ""))
    if left:
        raise FnatuneError(f"{left} record(s) still wait: {uri} does not answer ({error}); run `fnatune sync "
                           f"{run_dir}` again once it does")


@main.command()
@click.option("--tracking-uri", default=None, help="Store to browse (default: sqlite:///./mlflow.db).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (keep it local).")
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--print-command", is_flag=True, help="Print the mlflow command instead of running it.")
def ui(tracking_uri: str | None, host: str, port: int, print_command: bool) -> None:
    """Start the MLflow UI for the run store, on 127.0.0.1."""
    import subprocess

    from fnatune.tracking import default_tracking_uri, results_pages, ui_command

    uri = tracking_uri or default_tracking_uri()
    cmd = ui_command(uri, host, port)
    if print_command:
        click.echo(" ".join(cmd))
        return
    click.echo(f"MLflow UI on http://{host}:{port}  (Ctrl-C to stop)")
    for name, page in results_pages(uri, f"http://{host}:{port}"):
        click.echo(f"  {name}: {page}")
    raise SystemExit(subprocess.call(cmd))


def entry() -> None:
    """The ``fnatune`` console script: :func:`main`, then, once a command that used Ray has finished and
    every exit handler has run (Ray's included), the process ends without the interpreter's teardown of
    Ray, pyarrow and pandas, which takes about half a second and does nothing for the user."""
    try:
        main()
    except SystemExit as e:
        code = e.code
    else:  # pragma: no cover - click's standalone mode always exits
        code = 0
    if "ray" not in sys.modules:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    entry()
