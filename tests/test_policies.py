"""The policy registry: each policy declares itself; another package adds one by entry point."""
from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint

import pytest

from vla_eval.errors import UsageError
from vla_eval.policies import factory, registry


@pytest.fixture()
def fresh_registry(monkeypatch):
    """The registry as a first lookup finds it, with this test's entry points; restored after."""
    factory.policies()  # the originals, to restore
    monkeypatch.setattr(registry, "REGISTERED", {})
    monkeypatch.setattr(factory, "REGISTERED", registry.REGISTERED)
    monkeypatch.setattr(factory, "_loaded", False)
    for module in factory.POLICY_MODULES:  # their import registers them again (the originals come back after)
        parent, name = module.rsplit(".", 1)
        monkeypatch.setattr(sys.modules[parent], name, sys.modules[module])
        monkeypatch.delitem(sys.modules, module)

    def use(*entry_points: EntryPoint) -> dict:
        monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [
            ep for ep in entry_points if group == factory.ENTRY_POINT_GROUP])
        return factory.policies()
    return use


PLUGIN = """
    from vla_eval.policies.registry import PolicySpec, register_policy, state_builder
    from vla_eval.policies.zero import ZeroPolicy

    class StillPolicy(ZeroPolicy):
        name = "still"

    register_policy(PolicySpec("still", "a policy another package ships", reads_images=False,
                               build=state_builder(StillPolicy)))
"""


def test_the_built_in_policies_declare_themselves(fresh_registry):
    known = fresh_registry()
    assert list(known) == ["openvla", "tiny", "zero", "scripted"]
    assert known["tiny"].model and known["tiny"].shipped == "tiny" and not known["zero"].reads_images


def test_a_package_adds_a_policy_by_entry_point_and_a_broken_one_is_named(fresh_registry, tmp_path, monkeypatch,
                                                                           cli_run):
    (tmp_path / "still_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "still_plugin", raising=False)
    good = EntryPoint("still", "still_plugin", factory.ENTRY_POINT_GROUP)
    broken = EntryPoint("gone", "no_such_plugin_module", factory.ENTRY_POINT_GROUP)
    with pytest.warns(UserWarning, match="'gone'.*no_such_plugin_module"):
        known = fresh_registry(good, broken)
    assert list(known) == ["openvla", "tiny", "zero", "scripted", "still"]
    assert factory.make_policy("still", "libero_object").name == "still"
    with pytest.raises(UsageError, match="valid with --policy openvla or tiny"):
        factory.model_options("still", device="cpu")
    assert "still: a policy another package ships" in " ".join(cli_run("sweep", "--help").stdout.split())


def test_two_policies_with_one_name_are_refused(fresh_registry):
    known = fresh_registry()
    with pytest.raises(ValueError, match="two policies are named 'zero'"):
        registry.register_policy(registry.PolicySpec("zero", "another", reads_images=False,
                                                     build=known["zero"].build))
