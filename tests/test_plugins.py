"""Third-party plugins through entry points (issue 24 item 7): a fake installed distribution declares a seed and a
block family; both are registered, tested like built-ins, and a plugin that fails to import is named in one line
without leaving its registry half loaded. Each case runs in a fresh interpreter, as a user's would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_distribution(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution installed the way pip leaves one: ``*.dist-info`` with METADATA and entry_points.txt."""
    info = site / "fake_fnatune_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-fnatune-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, code in modules.items():
        path = site / Path(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(code))


def _run(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=240)


SEED_PLUGIN = """
    from functools import partial
    from fnatune.seeds import SeedAdapter, register_seed
    from fnatune.seeds._convert import block_from_pairs, build_layout, conv_bn_pairs

    def build(**kw):
        from torchvision.models import mobilenet_v2
        return mobilenet_v2(weights=None, width_mult=0.5, **kw)

    def layout(model):
        n = len(model.features)
        blocks = [block_from_pairs(conv_bn_pairs(model, f"features.{i}"), f"features.{i}") for i in range(1, n - 1)]
        return build_layout(model, conv_bn_pairs(model, "features.0")[0], blocks,
                            conv_bn_pairs(model, f"features.{n - 1}")[0], act="relu6", classifier="classifier.1")

    register_seed(SeedAdapter("thirdparty_mbv2_050", build, layout, lambda m, x: m.features(x),
                              description="a third party's seed"))
"""

FAMILY_PLUGIN = """
    from fnatune.blocks.mbconv import MBConvFamily, register_family

    class Plain(MBConvFamily):
        '''A third party's family: MBConv blocks under another grammar prefix, p3_e6.'''
        name = "plain"
        grammar = "p<kernel>_e<expansion>"

        def parse(self, op):
            if not op.startswith("p"):
                return None
            spec = super().parse("k" + op[1:])
            return spec

    register_family(Plain())
"""


def test_a_plugin_seed_and_family_are_registered_and_the_seed_computes_its_source(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, """
        [fnatune.seeds]
        mbv2_half = fake_fna_plugin.seeds
        [fnatune.blocks]
        plain = fake_fna_plugin.blocks
    """, {"fake_fna_plugin.seeds": SEED_PLUGIN, "fake_fna_plugin.blocks": FAMILY_PLUGIN})
    res = _run(tmp_path, """
        import json, torch
        from fnatune.blocks import list_families
        from fnatune.seeds import get_seed_adapter, list_seeds, load_seed
        adapter = get_seed_adapter("thirdparty_mbv2_050")
        torch.manual_seed(0)
        reference = adapter.build().eval()
        torch.save(reference.state_dict(), CKPT)
        seed = load_seed("thirdparty_mbv2_050", weights=CKPT)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            diff = (seed.build()(x)[-1] - adapter.features(reference, x)).abs().max().item()
        print(json.dumps({"seeds": "thirdparty_mbv2_050" in list_seeds(), "builtin": "mobilenet_v2" in list_seeds(),
                          "families": list_families(), "diff": diff}))
    """.replace("CKPT", json.dumps(str(tmp_path / "seed.pt"))))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["seeds"] and out["builtin"] and "plain" in out["families"] and out["diff"] == 0.0


def test_a_plugin_that_fails_to_import_is_named_and_leaves_nothing_half_registered(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, """
        [fnatune.seeds]
        broken = fake_fna_plugin.broken
        good = fake_fna_plugin.seeds
    """, {"fake_fna_plugin.seeds": SEED_PLUGIN, "fake_fna_plugin.broken": """
        from fnatune.seeds import SeedAdapter, register_seed
        register_seed(SeedAdapter("half_registered", lambda: None, lambda m: None, lambda m, x: x))
        import a_module_that_is_not_installed
    """})
    res = _run(tmp_path, """
        from fnatune.errors import UnknownNameError
        from fnatune.seeds import list_seeds, get_seed_adapter
        names = list_seeds()
        print("half" if "half_registered" in names else "clean", "good" if "thirdparty_mbv2_050" in names else "-",
              "builtin" if "mobilenet_v2" in names else "-")
        try:
            get_seed_adapter("half_registered")
        except UnknownNameError as e:
            print("UNKNOWN", e)
    """)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "clean good builtin"
    warning = [line for line in res.stderr.splitlines() if line.startswith("fnatune: plugin")]
    assert len(warning) == 1 and "'broken = fake_fna_plugin.broken'" in warning[0]
    assert "fake-fnatune-plugin" in warning[0] and "ModuleNotFoundError" in warning[0]
    assert lines[1].startswith("UNKNOWN") and "failed to import" in lines[1]
