"""The registry decides how a method trains (`MethodSpec.training`), not its name: a method registered under a
new name trains from a feature store by its kind, and its builder options come from its typed config."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.tiny_models import tiny_vit
from vqt.errors import VQTError
from vqt.features import extract_features
from vqt.methods import registry
from vqt.methods.spec import QueryConfig
from vqt.protocol.fitting import make_recipe, train_store_configs
from vqt.training import GridConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    backbone = tiny_vit("plain_cls")
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 32, 32, generator=generator), torch.arange(12) % 3)
    path = tmp_path_factory.mktemp("fitting") / "store"
    return backbone, extract_features(backbone, data, path, backbone_spec="tiny@random", transform={"resize": 32},
                                      dataset_meta={"list_file": "x"}, dtype="float32", progress=False)


@pytest.mark.parametrize(("base", "name"), [("linear", "my-probe"), ("vqt", "my-queries")])
def test_a_renamed_method_trains_from_the_store_by_its_kind(store, monkeypatch, base: str, name: str) -> None:
    backbone, features = store
    monkeypatch.setitem(registry.METHODS, name, replace(registry.METHODS[base], name=name))
    kwargs = registry.get_method(name).kwargs(queries=1, query_dropout=0.0)
    assert ("num_queries" in kwargs) == (base == "vqt")
    recipe = make_recipe(epochs=2, warmup_epochs=1, batch_size=4)
    trained = train_store_configs(name, backbone, 3, kwargs, features, [GridConfig(0.1, 0.0, 0)], recipe)
    assert len(trained) == 1 and trained[0].model is not None and not trained[0].failed
    assert len(trained[0].history.train_loss) == 2


def test_an_online_method_is_refused_a_store(store) -> None:
    backbone, features = store
    with pytest.raises(VQTError, match="does not train from a feature store"):
        train_store_configs("lora", backbone, 3, {}, features, [GridConfig(0.1, 0.0, 0)],
                            make_recipe(epochs=1, warmup_epochs=0, batch_size=4))


def test_query_config_is_typed() -> None:
    assert QueryConfig(2, "mean", 0.2).kwargs() == {"num_queries": 2, "variant": "mean", "query_dropout": 0.2}
    with pytest.raises(ValueError, match="num_queries"):
        QueryConfig(0)
    assert registry.get_method("lora").kwargs(queries=5) == {}
    assert {spec.training for spec in registry.METHODS.values()} == {"store-grid", "store-head", "online"}
