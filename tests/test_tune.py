"""Ray Tune orchestration: runs as trials on a local Ray (127.0.0.1 only), a sweep across a 2-node
cluster with every trial nested in MLflow, retries from Tune's checkpoint, kill + resume to the same
architecture, and the bad-input messages. One micro pipeline (the tiny seg flow at 64 px) throughout."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("ray")

from fnatune.cli import main

ROOT = Path(__file__).resolve().parents[1]
MICRO = {
    "_base_": str(ROOT / "pipelines/tiny/seg.yaml"),
    "name": "micro",
    "pretrain": {"iters": 20, "per_class_train": 8, "per_class_val": 2},
    "data": {"root": "data/micro_cityscapes", "generate": {"num_train": 8, "num_val": 2, "size": [64, 128]}},
    "search": {"epochs": 4, "warmup_epochs": 2, "steps_per_epoch": 4, "augment": {"crop": [64, 64]},
               "checkpoint_every": 2},
    "finetune": {"iters": 6, "log_every": 3, "checkpoint_every": 3, "augment": {"crop": [64, 64]}},
    "export": {"input": [64, 128], "onnx": False},
    "resources": {"cpu": 1},
    "tune": {"checkpoint_every_s": 0},  # every stage checkpoint also goes to Tune (the retry test needs step 6)
}


def _micro(tmp: Path, extra: dict | None = None, name: str = "micro.yaml") -> Path:
    from fnatune.config import deep_merge

    p = tmp / name
    p.write_text(yaml.safe_dump(deep_merge(MICRO, extra or {})))
    return p


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One working directory (data, seed cache) for the module; each test has its own runs and store."""
    return tmp_path_factory.mktemp("tune")


@pytest.fixture(scope="module")
def baseline_arch(workdir: Path) -> dict:
    """The micro pipeline run directly in this process (no Ray), with the trial's single thread."""
    import torch

    from fnatune.config import load_config
    from fnatune.framework import Progress
    from fnatune.pipeline import execute

    old, cwd = torch.get_num_threads(), os.getcwd()
    os.environ["FNATUNE_CACHE"] = str(workdir / "cache")
    os.chdir(workdir)
    torch.set_num_threads(1)
    try:
        cfg = load_config(_micro(workdir), ["tracking.enabled=false"])
        execute(cfg, workdir / "direct", progress=Progress(lambda _: None))
    finally:
        torch.set_num_threads(old)
        os.chdir(cwd)
    return json.loads((workdir / "direct/arch.json").read_text())


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("FNATUNE_CACHE", str(workdir / "cache"))
    return workdir


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _trial_worker(driver: int, deadline: float) -> int:
    """The pid of the Ray worker that runs the trial (Tune's ``ImplicitFunc`` actor), a descendant of ``driver``."""
    while time.monotonic() < deadline:
        parent, cmdline = {}, {}
        for d in Path("/proc").iterdir():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (ValueError, OSError, IndexError):
                continue
        for pid, cmd in cmdline.items():
            p = pid
            while p in parent and p != driver and p > 1:
                p = parent[p]
            if p == driver and "ImplicitFunc" in cmd:
                return pid
        time.sleep(0.05)
    raise AssertionError("no trial worker process appeared")


def _state_at(path: Path, stage: str, step: int) -> bool:
    """Whether the Tune checkpoint state at ``path`` is of ``stage`` at ``step`` or later; False while Tune is still
    copying it into its storage (an empty or partial file: Tune's copy is not atomic)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return state["stage"] == stage and state["step"] >= step


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_trial_is_retried_from_tunes_checkpoint(in_workdir: Path, baseline_arch: dict) -> None:
    """A lost node, for real: once Tune holds a copy of a search checkpoint, the trial's worker process is
    stopped, its local checkpoint deleted and the process killed. Tune retries the trial, which puts Tune's
    copy back, continues the search from it and ends with the uninterrupted run's arch."""
    uri = f"sqlite:///{in_workdir / 'retry.db'}"
    run = in_workdir / "retry"
    log = in_workdir / "retry.log"
    env = {**os.environ, "FNATUNE_CACHE": str(in_workdir / "cache")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir)), "--run-dir",
                                 str(run), "--tracking-uri", uri], cwd=in_workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not any(_state_at(p, "search", 4) for p in (run / "tune/experiment").glob(
                "*/checkpoint_*/fnatune_state.json")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no search checkpoint reached Tune in time"
            time.sleep(0.05)
        worker = _trial_worker(proc.pid, deadline)
        os.kill(worker, signal.SIGSTOP)
        assert not (run / "stages/search/done.json").exists()
        (run / "stages/search/work/checkpoint.pt").unlink()
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "retrying from its last checkpoint" in text
    assert re.search(r"resuming search from its checkpoint at step \d+ \(restored from Tune's copy\)", text), text
    assert json.loads((run / "arch.json").read_text()) == baseline_arch
    # per-epoch metrics reached MLflow (the search stage run; epochs after the restored step are logged again)
    state = json.loads((run / "run.json").read_text())
    client = _client(uri)
    search = next(r for r in client.search_runs([client.get_experiment_by_name("fnatune").experiment_id])
                  if r.info.run_name == "search")
    assert sorted({m.step for m in client.get_metric_history(search.info.run_id, "alpha_entropy")}) == list(range(4))
    assert search.data.tags["mlflow.parentRunId"] == state["parent_run"]
    parent = client.get_run(state["parent_run"])
    assert parent.data.tags["fnatune.node_ip"] == "127.0.0.1" and "mIoU" in parent.data.metrics


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_then_sigkill_mid_search_then_resume_gives_the_same_arch(in_workdir: Path, baseline_arch: dict
                                                                          ) -> None:
    """Ctrl-C (SIGINT to the process group) in the search ends the run with 130 and the resume command, not a
    summary; the resumed run is then SIGKILLed (its directory lock goes with the process) and resumed again, with
    a how-setting changed (``--set data.num_workers=1``), and the arch is the uninterrupted run's."""
    cfg = _micro(in_workdir)
    run = in_workdir / "killed"
    env = {**os.environ, "FNATUNE_CACHE": str(in_workdir / "cache")}

    def start(*args: str, log: Path) -> subprocess.Popen:  # type: ignore[type-arg]
        with open(log, "w") as out:
            return subprocess.Popen([sys.executable, "-m", "fnatune.cli", *args], cwd=in_workdir, env=env,
                                    start_new_session=True, stdout=out, stderr=subprocess.STDOUT)

    def wait_for(path: Path, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
        deadline = time.monotonic() + 240
        while not path.exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, f"{path.name} did not appear in time"
            time.sleep(0.05)

    proc = start("run", str(cfg), "--run-dir", str(run), "--set", "tracking.enabled=false", log=in_workdir / "int.log")
    wait_for(run / "stages/search/alpha/epoch_000.json", proc)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (in_workdir / "int.log").read_text()
    text = (in_workdir / "int.log").read_text()
    assert f"interrupted; continue with: fnatune resume {run}" in text and "results:" not in text
    assert "\x1b[" not in text and "(run_trial pid=" not in text and "[2/8] seed: done" in text  # a log file
    assert not (run / "stages/search/done.json").exists()

    proc = start("resume", str(run), log=in_workdir / "killed.log")
    wait_for(run / "stages/search/alpha/epoch_002.json", proc)  # killed after the third epoch
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "stages/search/done.json").exists()
    # the console script's path (``entry``: it ends the process itself once Ray is stopped), with a setting of how
    # the run is carried out changed: the search continues from its checkpoint, with a data-loader worker process
    # (the samples are seeded per sample, so the batches are the same)
    first_epoch = (run / "stages/search/alpha/epoch_000.json").stat().st_mtime_ns
    res = subprocess.run([sys.executable, "-m", "fnatune.cli", "resume", str(run), "--set", "data.num_workers=1"],
                         cwd=in_workdir, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("changed data.num_workers: 0 -> 1; applies from the next step\n")
    assert "[3/8] supernet: complete, skipped" in res.stdout
    assert (run / "stages/search/alpha/epoch_000.json").stat().st_mtime_ns == first_epoch  # not searched again
    assert not (run / "set_aside").exists()
    assert f"results: {run}" in res.stdout and "derived architecture:" in res.stdout  # flushed before the exit
    assert json.loads((run / "arch.json").read_text()) == baseline_arch


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_with_set_changes_how_in_place_and_starts_an_unfinished_stage_over(in_workdir: Path) -> None:
    """After a Ctrl-C in the search: a change of a finished stage's setting is refused in one line; then a resume
    with --set recomputes every mixed layer (a how change), searches 3 epochs instead of 4 (the search starts over,
    its first attempt set aside, its MLflow stage run ended) and fine-tunes 4 iterations instead of 6 (not started:
    applies when it runs). The finished stages are kept."""
    uri = f"sqlite:///{in_workdir / 'changed.db'}"
    run = in_workdir / "changed"
    env = {**os.environ, "FNATUNE_CACHE": str(in_workdir / "cache")}
    with open(in_workdir / "changed.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir)), "--run-dir",
                                 str(run), "--tracking-uri", uri], cwd=in_workdir, env=env, start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not (run / "stages/search/alpha/epoch_000.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (in_workdir / "changed.log").read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130

    def resume(*sets: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        args = [a for k in sets for a in ("--set", k)]
        return subprocess.run([sys.executable, "-m", "fnatune.cli", "resume", str(run), *args, "--tracking-uri", uri],
                              cwd=in_workdir, env=env, capture_output=True, text=True, timeout=600)

    res = resume("data.num_classes=5")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "Error: --set data.num_classes: stage 'data', whose result it shapes, has finished, so that result would not "
        "match the config; start a new run to change it"], res.stdout + res.stderr
    res = resume("search.recompute_mixed=1", "search.epochs=3", "finetune.iters=4")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(res.stdout.splitlines()[:3]) == [  # printed in the config's order
        "changed finetune.iters: 6 -> 4; applies when its stage runs",
        "changed search.epochs: 4 -> 3; stage 'search' starts over (its work so far is set aside)",
        "changed search.recompute_mixed: 0.7 -> 1.0; applies from the next step"]
    assert "[3/8] supernet: complete, skipped" in res.stdout and "resuming search" not in res.stdout
    aside, = (run / "set_aside").iterdir()
    assert (aside / "alpha/epoch_000.json").exists()
    assert sorted(p.name for p in (run / "stages/search/alpha").iterdir()) == [f"epoch_{e:03d}.json" for e in range(3)]
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("fnatune").experiment_id])
    finetune = next(r for r in runs if r.info.run_name == "finetune")
    assert [m.step for m in client.get_metric_history(finetune.info.run_id, "loss")] == [3, 4]  # log_every 3, last
    searches = sorted((r for r in runs if r.info.run_name == "search"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in searches] == ["KILLED", "FINISHED"]
    assert "fnatune.set_aside" in searches[0].data.tags
    assert sorted(m.step for m in client.get_metric_history(searches[1].info.run_id, "alpha_entropy")) == [0, 1, 2]
    parent = client.get_run(json.loads((run / "run.json").read_text())["parent_run"])
    assert "search.epochs: 4 -> 3" in parent.data.tags["fnatune.resume_changes"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_trial_process_that_aborts_is_a_failed_run_not_a_success(in_workdir: Path) -> None:
    """SIGABRT to the trial's worker in the middle of the search (``Fatal Python error: Aborted`` in the Tune
    worker): with no retries left the run exits non-zero with the cause and the resume command, prints no
    results, and marks nothing done that did not finish."""
    run = in_workdir / "aborted"
    log = in_workdir / "aborted.log"
    env = {**os.environ, "FNATUNE_CACHE": str(in_workdir / "cache")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir)), "--run-dir",
                                 str(run), "--set", "tune.retries=0", "--set", "tracking.enabled=false"],
                                cwd=in_workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not (run / "stages/search/alpha/epoch_000.json").exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the search did not start in time"
            time.sleep(0.05)
        os.kill(_trial_worker(proc.pid, deadline), signal.SIGABRT)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 2, text
    assert "no retries left" in text and "results:" not in text, text
    assert f"after fixing the cause: fnatune resume {run}" in text, text
    assert "[2/8] seed: done" in text and not (run / "stages/search/done.json").exists()
    assert not (run / "arch.json").exists()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_input_fails_fast_with_clear_messages(in_workdir: Path) -> None:
    runner = CliRunner()
    t0 = time.monotonic()
    res = runner.invoke(main, ["run", str(_micro(in_workdir)), "--run-dir", "bad1",
                               "--address", f"127.0.0.1:{_free_port()}"])
    assert res.exit_code == 2 and time.monotonic() - t0 < 15
    assert "no Ray cluster answers at 127.0.0.1:" in res.output and "ray start --head" in res.output
    sweep = {"sweep": {"method": "grid", "params": {"search.cost.lamda": [0.1, 0.2]}}}
    res = runner.invoke(main, ["run", str(_micro(in_workdir, sweep, "s.yaml")), "--run-dir", "bad2"])
    assert res.exit_code == 2 and "'search.cost.lamda' is not a key" in res.output
    assert "search.cost.lambda" in res.output and not (in_workdir / "bad2").exists()
    res = subprocess.run([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir)), "--run-dir", "bad3",
                          "--set", "resources.gpu=4", "--set", "tracking.enabled=false"], cwd=in_workdir,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "cannot run even one trial" in res.stderr and "'gpu': 4.0" in res.stderr


# A two-node cluster on the loopback, kept up by a process of its own: Ray's authentication state is per process
# (a local Ray started earlier in this one switches it to token mode for good), so neither the cluster nor the
# drivers may share the test's process.
CLUSTER = """
import os, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                          "node_ip_address": "127.0.0.1"})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
Path(sys.argv[1]).write_text(cluster.address)
while not Path(sys.argv[2]).exists():
    time.sleep(0.1)
cluster.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sweep_across_a_two_node_cluster(in_workdir: Path, tmp_path: Path) -> None:
    """Two Ray nodes on 127.0.0.1 with one CPU each; an NSGA-II sweep of two trials runs one trial per
    node, each trial a nested MLflow run (stages nested below it) with its metrics; then a trial that asks
    for a GPU the cluster lacks ends with a timeout message instead of waiting forever. The cluster has no
    token authentication while this machine has a token (any local Ray writes one): the driver must not
    use it then (it did, and the cluster dropped every trial's actor before it ran)."""
    token = tmp_path / "auth_token"
    token.write_text("0123456789abcdef" * 4)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update({"RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "FNATUNE_CACHE": str(in_workdir / "cache"), "RAY_USAGE_STATS_ENABLED": "0"})
    address_file, stop_file = tmp_path / "address", tmp_path / "stop"
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER, str(address_file), str(stop_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists():
            assert cluster.poll() is None and time.monotonic() < deadline, "the test cluster did not start"
            time.sleep(0.1)
        address = address_file.read_text()

        def cli(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
            return subprocess.run([sys.executable, "-m", "fnatune.cli", *args], cwd=in_workdir, env=env,
                                  capture_output=True, text=True, timeout=600)

        sweep = {"sweep": {"method": "optuna", "objectives": ["metric", "cost"], "num_samples": 2,
                           "max_concurrent": 2, "seed": 3,
                           "params": {"search.cost.lambda": {"loguniform": [0.01, 1.0]},
                                      "search.temperature": {"uniform": [0.5, 2.0]}}}}
        uri = f"sqlite:///{in_workdir / 'sweep.db'}"
        res = cli("run", str(_micro(in_workdir, sweep, "sweep.yaml")), "--run-dir", "sweep", "--tracking-uri", uri,
                  "--address", address)
        assert res.returncode == 0, res.stdout + res.stderr
        run = in_workdir / "sweep"
        rows = json.loads((run / "sweep_summary.json").read_text())
        assert len(rows) == 2 and all(r["status"] == "done" for r in rows), res.stdout
        assert len({r["set"]["search.cost.lambda"] for r in rows}) == 2
        assert (run / "pareto_front.png").stat().st_size > 0 and any(r.get("pareto") for r in rows)

        client = _client(uri)
        state = json.loads((run / "run.json").read_text())
        exp = client.get_experiment_by_name("fnatune").experiment_id
        runs = client.search_runs([exp])
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run"]]
        assert len(trials) == 2
        assert len({t.data.tags["fnatune.node_id"] for t in trials}) == 2  # one trial per node
        for t in trials:
            assert "mIoU" in t.data.metrics and t.info.status == "FINISHED"
            assert float(t.data.params["search.cost.lambda"]) in {r["set"]["search.cost.lambda"] for r in rows}
            stages = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == t.info.run_id}
            assert {"search", "finetune", "evaluate", "export"} <= stages
        arts = {a.path for a in client.list_artifacts(state["parent_run"])}
        assert {"pareto_front.png", "pareto_front.md", "sweep_summary.md"} <= arts

        t0 = time.monotonic()
        res = cli("run", str(_micro(in_workdir)), "--run-dir", "gpu", "--address", address, "--set", "resources.gpu=1",
                  "--set", "tune.pending_timeout_s=2", "--set", "tracking.enabled=false")
        assert res.returncode == 2 and time.monotonic() - t0 < 60, res.stdout + res.stderr
        assert "no trial could start within tune.pending_timeout_s = 2 s" in res.stderr and "'gpu': 1.0" in res.stderr
    finally:
        stop_file.write_text("")
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_start_cluster_on_the_loopback_with_token_auth(in_workdir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The hint's own `ray start` (127.0.0.1, token authentication as Ray 2.5x turns on) is joined with
    --address; and while it runs, a plain `fnatune run` still starts a Ray of its own instead of joining it."""
    token = tmp_path / "auth_token"
    token.write_text("0123456789abcdef" * 4)
    for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_TOKEN_PATH": str(token),
                 "RAY_USAGE_STATS_ENABLED": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_cli, port = str(Path(sys.executable).with_name("ray")), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false"], env=env, check=True, capture_output=True, timeout=120)
    quick = {"search": {"enabled": False}, "arch": "seed", "finetune": {"iters": 3}}
    try:
        # fresh processes, as a user's: this one's Ray keeps the token state of the tests' earlier local Rays
        joined = subprocess.run([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir, quick, "joined.yaml")),
                                 "--run-dir", "joined", "--address", f"127.0.0.1:{port}", "--set",
                                 "tracking.enabled=false"], cwd=in_workdir, capture_output=True, text=True, timeout=300)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        assert (in_workdir / "joined/arch.json").exists()
        # plain ray.init() would join the cluster above (Ray finds it) and refuse num_cpus
        own = subprocess.run([sys.executable, "-m", "fnatune.cli", "run", str(_micro(in_workdir, quick, "own.yaml")),
                              "--run-dir", "own", "--set", "tracking.enabled=false", "--set", "resources.cpu=2"],
                             cwd=in_workdir, capture_output=True, text=True, timeout=300)
        assert own.returncode == 0, own.stdout + own.stderr
    finally:
        subprocess.run([ray_cli, "stop"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_variants_are_trials_with_a_summary_table(in_workdir: Path) -> None:
    extra = {"search": {"enabled": False}, "arch": "seed", "tune": {"checkpoint_every_s": 1e6},
             "variants": [{"name": "remap", "paper": {"value": 76.6, "ref": "Table 5 remap/remap"}},
                          {"name": "random_ft", "set": {"finetune.init": "random"},
                           "paper": {"value": 73.0, "ref": "Table 5 remap/random"}},
                          {"name": "pretrained", "set": {"finetune.init": "pretrained"}},
                          {"name": "diverges", "set": {"finetune.optim.lr": 1e30}}]}
    uri = f"sqlite:///{in_workdir / 'variants.db'}"
    res = CliRunner().invoke(main, ["run", str(_micro(in_workdir, extra, "variants.yaml")), "--run-dir", "variants",
                                    "--tracking-uri", uri])
    # the table is printed, but a failed variant makes the exit code say so; a NaN loss is not retried
    assert res.exit_code == 2 and "1 of 4 trials failed (diverges)" in res.output, res.output
    assert "| random_ft | finetune.init=random |" in res.output and "retrying" not in res.output
    run = in_workdir / "variants"
    rows = json.loads((run / "ablation_summary.json").read_text())
    assert [r["name"] for r in rows] == ["remap", "random_ft", "pretrained", "diverges"]
    assert [r["status"] for r in rows[:3]] == ["done"] * 3 and "non-finite loss" in rows[3]["status"], rows[3]
    summary = (run / "ablation_summary.md").read_text()
    assert "| random_ft | finetune.init=random |" in summary and "| 73.0 | Table 5 remap/random |" in summary
    assert "Ordered as in the paper: " in summary and " of 1 pairs" in summary
    # the pretrained target: the arch trained on its own with the seed's pretraining recipe, then fine-tuned
    target = json.loads((run / "variants/pretrained/stages/target/done.json").read_text())
    assert 0.0 <= target["metrics"]["pretrain_val_acc"] <= 1.0
    # the fine-tune wrote its checkpoints, but none was old enough to be copied into Tune's storage
    trial_dirs = list((run / "tune/experiment").iterdir())
    assert len([d for d in trial_dirs if d.is_dir()]) == 4
    assert not list((run / "tune/experiment").glob("*/checkpoint_*"))
    client = _client(uri)
    parent = json.loads((run / "run.json").read_text())["parent_run"]
    trials = {r.data.tags.get("fnatune.variant"): r for r in client.search_runs(
        [client.get_experiment_by_name("fnatune").experiment_id]) if r.data.tags.get("mlflow.parentRunId") == parent}
    assert {"remap", "random_ft"} <= set(trials)
    assert "mIoU" in trials["remap"].data.metrics and "mIoU" in trials["random_ft"].data.metrics
    assert trials["random_ft"].data.params["finetune.init"] == "random"


def test_cluster_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` does; raises on a schema violation
    assert config["head_node_type"] in config["available_node_types"]
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(w["max_workers"] > w.get("min_workers", 0) for w in workers)  # autoscaling
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])


def test_a_trial_killed_for_memory_is_one_line_with_where_how_much_and_what_to_lower(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ray's memory monitor kills a worker with a report of some 80 lines; the driver says it in one."""
    from fnatune.config import load_config
    from fnatune.experiment import memory_message
    from fnatune.rundir import RunDir
    from fnatune.tune import killed_pid, memory_kill

    report = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n"
              "Memory on the node (IP: 127.0.0.1, ID: 4f2) where the lease (actor ID: 9a, name=ImplicitFunc.__init__, "
              "pid=8080, actual memory used=16.7GB, worker ID=ee1) was running was 22.8GB / 24.0GB (0.95), which "
              "exceeds the memory usage threshold of 0.95.\nTop 10 memory users:\nPID\tMEM(GB)\tCOMMAND\n...")
    assert memory_kill(report) == 16.7 and killed_pid(report) == 8080
    # Ray 2.60's report lists the workers it considered; the one it killed is the "Selected to kill" entry
    assert killed_pid("Considered workers: [(Actor(77ab): task name=ImplicitFunc.train, pid=555, actual memory "
                      "used=0.2GB)\nSelected to kill: (Actor(10fc): job ID=01, task name=ImplicitFunc."
                      "__init__, required resources={CPU: 2}, pid=10821, actual memory used=18.81GB)\n]\nTop 10 "
                      "memory users: PID\tMEM(GB)\n10821\t18.81\n") == 10821
    assert memory_kill("ValueError: a bug") is None
    assert memory_kill("OutOfMemoryError: no figures") != memory_kill("OutOfMemoryError: no figures")  # nan
    cfg = load_config(ROOT / "pipelines/tiny/pose.yaml", ["search.batch_size=2"])
    run = RunDir(tmp_path / "run")
    for stage in ("data", "seed", "supernet"):
        run.mark_done(stage, {"outputs": {}, "metrics": {}, "hours": 0.0})
    (run.stage_dir("search") / "work").mkdir(parents=True)
    (run.stage_dir("search") / "work/step.json").write_text(json.dumps({"kind": "arch"}))
    msg = memory_message(cfg, run, 16.7)
    assert "\n" not in msg
    assert msg.startswith("Ray's memory monitor killed the trial in stage 'search' during its arch steps")
    assert "its worker holding 16.7 GB" in msg and "search.batch_size (now 2;" in msg
    assert f"(same gradients; now 0.7): `fnatune resume {run.path} --set search.recompute_mixed=1`" in msg
    assert f"`fnatune resume {run.path} --set search.batch_size=1` starts the search over" in msg
    assert "its input size (search.augment.crop, now [513, 513])" not in msg  # the tiny pose pipeline's own:
    assert "its input size (pose.input_size, now [" in msg                    # a person crop's size
    # weight steps are single-path: recomputing mixed layers cannot help; a batch of 1 leaves the input size
    (run.stage_dir("search") / "work/step.json").write_text(json.dumps({"kind": "weight"}))
    seg = load_config(ROOT / "pipelines/tiny/seg.yaml", ["search.batch_size=1"])
    msg = memory_message(seg, run, 3.0)
    assert "recompute" not in msg and msg.endswith(
        f"lower the search's input size (the batch is 1): `fnatune resume {run.path} --set "
        f"search.augment.crop=[{int(seg.search.augment.crop[0] * 0.75) // 32 * 32},"
        f"{int(seg.search.augment.crop[1] * 0.75) // 32 * 32}]` starts the search over")
    run.mark_done("search", {"outputs": {}, "metrics": {}, "hours": 0.0})
    run.mark_done("target", {"outputs": {}, "metrics": {}, "hours": 0.0})
    msg = memory_message(seg, run, 3.0)
    assert msg.startswith("Ray's memory monitor killed the trial in stage 'finetune', its worker holding 3.0 GB")
    assert f"--set finetune.batch_size={seg.finetune.batch_size // 2}` starts the fine-tune over" in msg


def test_a_memory_kill_in_a_sweep_names_the_trial_whose_process_was_killed(tmp_path: Path) -> None:
    """Tune's crash ends every trial of a sweep; the line names the one whose process the monitor chose (each trial
    records its pid), where it was, and resumes the sweep."""
    from fnatune.config import load_config
    from fnatune.experiment import _memory_error
    from fnatune.rundir import RunDir
    from fnatune.tune import MemoryKilled

    cfg = load_config(ROOT / "pipelines/tiny/sweep.yaml")
    root = RunDir(tmp_path / "sweep")
    for n, tid in enumerate(("a1_00000", "a1_00001")):
        trial = root.trial(tid)
        trial.path.mkdir(parents=True)
        trial.write_config(load_config(ROOT / "pipelines/tiny/seg.yaml", [f"finetune.batch_size={4 + n}"]), "test")
        (trial.path / RunDir.WORKER).write_text(json.dumps({"pid": 7000 + n, "host": "h"}))
        trial.mark_done("data", {"outputs": {}, "metrics": {}, "hours": 0.0})
    for stage in ("seed", "supernet", "search", "target"):
        root.trial("a1_00001").mark_done(stage, {"outputs": {}, "metrics": {}, "hours": 0.0})
    msg = str(_memory_error(cfg, root, MemoryKilled(5.5, 7001)))
    assert msg.startswith("Ray's memory monitor killed trial a1_00001 in stage 'finetune', its worker holding 5.5 GB")
    assert "its finetune.batch_size 5: lower them in a new run" in msg
    assert msg.endswith(f"or continue as it is with `fnatune resume {root.path}`")
    msg = str(_memory_error(cfg, root, MemoryKilled(float("nan"), 9)))  # no trial had that process
    assert msg.startswith("Ray's memory monitor killed one of the trials: ") and "sweep.max_concurrent" in msg


def _hog(config: dict, payload: dict) -> None:
    """A trial that takes memory in 128 MiB steps (pages touched) until Ray's memory monitor kills it, or until
    ``payload['cap_mib']``, when it records that nothing killed it."""
    import numpy as np

    held = []
    while len(held) * 128 < payload["cap_mib"]:
        held.append(np.ones(128 << 20, dtype=np.uint8))
        time.sleep(0.05)
    Path(payload["survived"]).write_text(str(len(held) * 128))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_memory_monitor_kill_is_recognised_with_what_the_process_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray 2.60's memory monitor kills a trial's actor with an ``OutOfMemoryError`` that Tune's controller
    re-raises out of ``Tuner.fit`` (not a trial error; before the fix it ended the run with that traceback):
    ``run_trials`` turns it into :class:`MemoryKilled` with the killed process and what it held. A real kill: the
    local Ray's threshold is set 1.5 GiB above what the machine uses now, and the trial takes memory until the
    monitor acts (8 GiB at most: past that, nothing killed it)."""
    from fnatune.tune import MemoryKilled, Resources, TrialPlan, ray_session, run_trials

    # Ray's measure without a cgroup limit: used = MemTotal - MemAvailable
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total, available = (int(info[k].split()[0]) << 10 for k in ("MemTotal", "MemAvailable"))
    monkeypatch.setenv("RAY_memory_usage_threshold", f"{(total - available + (1536 << 20)) / total:.4f}")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    survived = tmp_path / "survived.txt"
    plan = TrialPlan(_hog, {"cap_mib": 8192, "survived": str(survived)}, tmp_path / "tune", Resources(cpu=1),
                     Resources(cpu=1), retries=0)
    with ray_session(num_cpus=1):
        try:
            results = run_trials(plan)
        except MemoryKilled as killed:  # the route a kill during the trial's task takes in Ray 2.60
            assert killed.pid is not None and killed.pid != os.getpid()
            gb = killed.gb
        else:  # a kill Tune sees as the trial's own error (its retries are 0)
            assert len(results) == 1 and results[0].error
            gb = results[0].memory_gb
    assert not survived.exists()
    # what the report says the hog held at the kill: a figure (not nan), below what it would have taken unkilled
    assert gb is not None and 0 < gb < 8.5
