"""Pipeline YAML: schema errors name file and key path, _base_ inheritance, --set overrides."""
from __future__ import annotations

from pathlib import Path

import pytest

from fnatune.config import ConfigError, check_sweep_keys, load_config, load_raw, validate
from fnatune.pipeline import variant_config

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_pipelines_validate() -> None:
    from fnatune.mm import missing

    names = []
    for p in sorted((ROOT / "pipelines").rglob("*.yaml")):
        if p.name.startswith("_"):  # partial bases (shared sections), not pipelines
            continue
        if p.parent.name == "mm" and missing():  # the mm backend's pipelines, refused without the mm extra
            with pytest.raises(ConfigError, match="backend: mm needs OpenMMLab"):
                load_config(p)
            continue
        cfg = load_config(p)
        check_sweep_keys(cfg, str(p))
        names.append(cfg.name)
    assert {"fna-seg-cityscapes", "fna-retinanet-coco", "fna-ssdlite-coco", "tiny-det", "tiny-ssdlite",
            "tiny-seg-sweep", "fna-retinanet-sweep", "demo-seg", "demo-det", "demo-pose"} <= set(names)
    assert {load_config(ROOT / f"pipelines/{p}.yaml").backend for p in ("seg", "det", "ssdlite", "tiny/seg", "tiny/det")} \
        == {"torchvision"}


def test_sweep_section_is_checked_with_the_key_named() -> None:
    base = {"name": "s", "task": "seg", "sweep": {"method": "grid", "params": {"search.cost.lambda": [0.1, 0.2]}}}
    cfg = validate(base)
    check_sweep_keys(cfg)
    with pytest.raises(ConfigError, match=r"'search.temprature' is not a key .* did you mean search.temperature"):
        check_sweep_keys(validate({**base, "sweep": {"params": {"search.temprature": [1.0]}}}))
    with pytest.raises(ConfigError, match=r"(?s)sweep.params.search.warmup_epochs = 20\).*exceeds epochs \(14\)"):
        check_sweep_keys(validate({**base, "sweep": {"params": {"search.warmup_epochs": [2, 20]}}}))
    with pytest.raises(ConfigError, match="a grid sweep needs a non-empty list"):
        validate({**base, "sweep": {"params": {"search.epochs": 3}}})
    with pytest.raises(ConfigError, match="expected a list of choices or one of"):
        validate({**base, "sweep": {"method": "optuna", "params": {"search.epochs": {"normal": [1, 2]}}}})
    with pytest.raises(ConfigError, match="two objectives need sampler nsga2"):
        validate({**base, "sweep": {"method": "optuna", "sampler": "tpe", "objectives": ["metric", "cost"],
                                    "params": {"search.temperature": {"uniform": [0.5, 2]}}}})
    with pytest.raises(ConfigError, match="either 'variants'"):
        validate({**base, "variants": [{"name": "a"}]})


def test_det_recipes_follow_the_paper() -> None:
    """FNA_SPEC §5.6, §6.1, §6.2."""
    retina, ssd = load_config(ROOT / "pipelines/det.yaml"), load_config(ROOT / "pipelines/ssdlite.yaml")
    assert retina.space == "mbv2_det" and retina.detector.type == "retinanet"
    assert (retina.search.epochs, retina.search.warmup_epochs, retina.search.cost.lam) == (14, 8, 0.02)
    assert retina.search.cost.input == (800, 1088) and retina.search.temperature == 1.0
    assert (retina.finetune.optim.lr, retina.finetune.optim.weight_decay, retina.finetune.batch_size) == (0.05, 5e-5, 32)
    assert ssd.space == "mbv2_ssdlite" and ssd.detector.type == "ssdlite" and ssd.data.std == (1.0, 1.0, 1.0)
    assert (ssd.search.epochs, ssd.search.warmup_epochs, ssd.search.cost.lam) == (30, 15, 0.15)
    assert (ssd.search.weight_steps, ssd.search.repeat, ssd.search.temperature) == (5, 5, 0.9)
    assert ssd.search.weight_optim.name == "rmsprop" and ssd.search.weight_optim.eps == 1.0
    assert ssd.finetune.augment.ssd_augment and not ssd.finetune.augment.keep_ratio
    tiny = load_config(ROOT / "pipelines/tiny/det.yaml")
    assert tiny.search.cost.input == (800, 1088) and tiny.detector.score_thr == 0.05   # inherited


def test_det_task_needs_a_detector_and_fills_task_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path / "a.yaml", "name: d\ntask: det\ndetector: {type: ssdlite}\n"))
    assert (cfg.space, cfg.data.root, cfg.data.num_classes) == ("mbv2_ssdlite", "data/coco", 80)
    with pytest.raises(ConfigError, match="'detector' must be given"):
        load_config(_write(tmp_path / "b.yaml", "name: d\ntask: det\n"))
    with pytest.raises(ConfigError, match="only for task det"):
        load_config(_write(tmp_path / "c.yaml", "name: d\ntask: seg\ndetector: {type: retinanet}\n"))
    with pytest.raises(ConfigError, match=r"task: required, one of det, pose, seg"):
        load_config(_write(tmp_path / "d.yaml", "name: d\n"))
    with pytest.raises(ConfigError, match=r"task: unknown task 'sgmentation'.*Known tasks: det, pose, seg"):
        load_config(_write(tmp_path / "e.yaml", "name: d\ntask: sgmentation\n"))


def test_tiny_seg_inherits_the_paper_recipe() -> None:
    cfg = load_config(ROOT / "pipelines/tiny/seg.yaml")
    paper = load_config(ROOT / "pipelines/seg.yaml")
    assert cfg.space == paper.space == "mbv2_seg"
    assert cfg.search.arch_optim.betas == paper.search.arch_optim.betas == (0.5, 0.999)
    assert cfg.search.cost.input == (1024, 2048)          # inherited
    assert cfg.finetune.iters < paper.finetune.iters == 100_000
    assert paper.finetune.batch_size == 16 and paper.finetune.augment.crop == (769, 769)
    assert paper.finetune.policy == "poly"


def test_unknown_key_is_an_error_naming_file_and_path(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.yaml", "name: x\ntask: seg\nsearch:\n  epochs: 3\n  warmup_epoch: 1\n")
    with pytest.raises(ConfigError, match=r"p.yaml.*\n  search.warmup_epoch: unknown key"):
        load_config(p)


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.yaml", "name: x\ntask: seg\nfinetune: {iters: many}\n")
    with pytest.raises(ConfigError, match=r"finetune.iters: .*integer.*got 'many'"):
        load_config(p)


def test_base_chain_merges_and_delete_replaces(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "base.yaml",
           "name: base\ntask: seg\nsearch: {epochs: 9, warmup_epochs: 4}\ndata: {root: /a, num_classes: 5}\n")
    _write(tmp_path / "sub" / "mid.yaml", "_base_: ../base.yaml\nsearch: {epochs: 6}\n")
    child = _write(tmp_path / "sub" / "child.yaml",
                   "_base_: mid.yaml\nname: child\ndata: {_delete_: true, root: /b}\n")
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.search.epochs == 6 and cfg.search.warmup_epochs == 4
    assert cfg.data.root == "/b" and cfg.data.num_classes == 19  # replaced, so back to the default


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "_base_: b.yaml\nname: a\ntask: seg\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_raw(tmp_path / "a.yaml")


def test_set_overrides_parse_yaml_values_and_reject_unknown_keys(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.yaml", "name: x\ntask: seg\n")
    cfg = load_config(p, ["search.epochs=5", "search.warmup_epochs=2", "search.cost.lambda=0.3",
                          "finetune.augment.crop=[64, 64]", "seed_net.weights=null"])
    assert cfg.search.epochs == 5 and cfg.search.cost.lam == 0.3
    assert cfg.finetune.augment.crop == (64, 64) and cfg.seed_net.weights is None
    with pytest.raises(ConfigError, match=r"after --set.*\n  search.epochz: unknown key"):
        load_config(p, ["search.epochz=5"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(p, ["search.epochs"])
    with pytest.raises(ConfigError, match="warmup_epochs .* exceeds epochs"):
        load_config(p, ["search.epochs=2", "search.warmup_epochs=3"])


def test_a_partly_written_section_keeps_its_own_defaults(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.yaml",
               "name: x\ntask: seg\npretrain: {optim: {name: adam}}\nsearch: {arch_optim: {lr: 0.01}, augment: {flip: 0}}\n")
    cfg = load_config(p, ["finetune.optim.momentum=0.8"])
    assert cfg.pretrain.optim.name == "adam" and cfg.pretrain.optim.grad_clip is None and cfg.pretrain.optim.lr == 0.05
    assert cfg.search.arch_optim.name == "adam" and cfg.search.arch_optim.betas == (0.5, 0.999)
    assert cfg.search.augment.crop == (513, 513)
    assert cfg.finetune.optim.lr == 0.01 and cfg.finetune.optim.grad_clip is None


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = _write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_variants_apply_their_overrides() -> None:
    cfg = load_config(ROOT / "pipelines/tiny/ablation.yaml")
    names = [v.name for v in cfg.variants]
    assert {"remap", "random_search_init", "random_finetune_init", "dilation_kernel", "bn_gamma_width",
            "seed_arch"} <= set(names)
    rnd = variant_config(cfg, next(v for v in cfg.variants if v.name == "random_finetune_init").set, "r")
    assert rnd.finetune.init == "random" and rnd.variants == []


@pytest.mark.parametrize("setting,value,expected", [
    ("search.weight_optim.lr", ".inf", r"search\.weight_optim\.lr: Input should be a finite number"),
    ("finetune.optim.lr", ".nan", r"finetune\.optim\.lr: Input should be a finite number"),
    ("search.weight_lr.warmup_epochs", "true", r"search\.weight_lr\.warmup_epochs: .*not true/false"),
    ("finetune.iters", "false", r"finetune\.iters: .*not true/false"),
    ("search.augment.scale", "[true, 128]", r"search\.augment\.scale: .*not true/false"),
])
def test_numbers_that_are_infinite_or_booleans_are_refused(setting: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(ROOT / "pipelines/tiny/seg.yaml", [f"{setting}={value}"])


def test_true_and_false_stay_valid_where_a_flag_is_meant() -> None:
    cfg = load_config(ROOT / "pipelines/tiny/seg.yaml", ["search.enabled=false", "arch=seed", "remap.noise=true"])
    assert cfg.search.enabled is False and cfg.remap.noise is True


def test_a_key_written_twice_is_named_with_both_lines(tmp_path: Path) -> None:
    p = _write(tmp_path / "p.yaml", "name: a\ntask: seg\nsearch:\n  epochs: 4\n  batch_size: 2\n  epochs: 6\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: key 'epochs' is written twice in one mapping \(lines 4 and 6\)"):
        load_config(p)


def test_an_empty_pipeline_file_says_name_and_task_are_missing(tmp_path: Path) -> None:
    p = _write(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError, match=r"'name' and 'task' are required .*; the file sets nothing"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"task: required, one of det, pose, seg"):
        load_config(_write(tmp_path / "no_task.yaml", "name: a\n"))


def test_a_yaml_syntax_error_names_its_line(tmp_path: Path) -> None:
    p = _write(tmp_path / "bad.yaml", "name: x\n  task: seg\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 2 column 7: not valid YAML: mapping values are not allowed"):
        load_config(p)
