import json
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maml_lab.core.export import (
    FORMAT_VERSION,
    InitializationError,
    export_initialization,
    load_initialization,
    sidecar_path,
)
from maml_lab.core.training.config import ExperimentConfig
from maml_lab.core.training.trainer import Trainer


@pytest.fixture(scope="module")
def trainer():
    config = ExperimentConfig(iterations=5, meta_batch_size=4, val_every=0)
    t = Trainer(config)
    t.run()
    return t


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip_is_bit_exact(trainer, tmp_path, suffix):
    path = tmp_path / f"init{suffix}"
    trainer.export("maml", path)
    params, meta, model = load_initialization(path)
    for k, v in trainer.runs["maml"].params.items():
        assert torch.equal(params[k], v.detach())
    assert meta["algorithm"] == "maml"
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"] == {"kind": "mlp", "sizes": [1, 40, 40, 1], "activation": "relu"}
    assert meta["iterations"] == 5
    assert meta["hyperparameters"]["inner_lr"] == 0.01
    assert "torch" in meta["versions"]
    assert "post_loss" in meta["metrics"]


def test_plain_pytorch_snippet_reproduces_engine_predictions(trainer, tmp_path):
    path = tmp_path / "init.safetensors"
    trainer.export("maml", path)
    # docs/exports.md's snippet, verbatim in spirit: no maml_lab import needed to use the file
    from torch import nn
    model = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    model.load_state_dict(load_file(path))
    x = torch.linspace(-5, 5, 50).reshape(-1, 1)
    engine = trainer.model.forward(trainer.runs["maml"].params, x.unsqueeze(0))[0]
    torch.testing.assert_close(model(x), engine.detach(), rtol=0, atol=0)
    pt = tmp_path / "init.pt"
    trainer.export("maml", pt)
    model.load_state_dict(torch.load(pt, weights_only=True))
    torch.testing.assert_close(model(x), engine.detach(), rtol=0, atol=0)


def test_truncated_and_corrupt_files_are_refused_clearly(trainer, tmp_path):
    path = tmp_path / "init.safetensors"
    trainer.export("maml", path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InitializationError, match="truncated.safetensors is not a readable safetensors"):
        load_initialization(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(InitializationError, match="not a readable safetensors"):
        load_initialization(garbage)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(InitializationError, match="not a readable PyTorch state dict"):
        load_initialization(bad_pt)
    with pytest.raises(InitializationError, match="file not found"):
        load_initialization(tmp_path / "missing.safetensors")
    with pytest.raises(InitializationError, match="unsupported"):
        load_initialization(path.with_suffix(".txt").write_text("x") and path.with_suffix(".txt"))


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"0.weight": Evil()}, path)
    with pytest.raises(InitializationError):
        load_initialization(path)
    assert not (tmp_path / "pwned").exists()


def test_mismatched_files_name_the_difference(trainer, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "init.safetensors"
    trainer.export("maml", path)
    meta = json.loads(__import__("safetensors").safe_open(str(path), "pt").metadata()["maml_lab"])
    tensors = load_file(path)
    wrong_shape = dict(tensors, **{"2.weight": torch.zeros(40, 39)})
    save_file(wrong_shape, tmp_path / "shape.safetensors", metadata={"maml_lab": json.dumps(meta)})
    with pytest.raises(InitializationError, match=r"2.weight has shape \[40, 39\], expected \[40, 40\]"):
        load_initialization(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "4.bias"}
    save_file(missing, tmp_path / "missing.safetensors", metadata={"maml_lab": json.dumps(meta)})
    with pytest.raises(InitializationError, match="missing \\['4.bias'\\]"):
        load_initialization(tmp_path / "missing.safetensors")
    future = dict(meta, format_version=FORMAT_VERSION + 1)
    save_file(tensors, tmp_path / "future.safetensors", metadata={"maml_lab": json.dumps(future)})
    with pytest.raises(InitializationError, match="format version"):
        load_initialization(tmp_path / "future.safetensors")
    nan = dict(tensors, **{"0.bias": torch.full((40,), float("nan"))})
    save_file(nan, tmp_path / "nan.safetensors", metadata={"maml_lab": json.dumps(meta)})
    with pytest.raises(InitializationError, match="NaN"):
        load_initialization(tmp_path / "nan.safetensors")
    with pytest.raises(InitializationError, match="expects a MLP 1-20-1"):
        load_initialization(path, expected_model={"kind": "mlp", "sizes": [1, 20, 1], "activation": "relu"})


def test_interrupted_export_keeps_the_previous_file(trainer, tmp_path, monkeypatch):
    path = tmp_path / "init.safetensors"
    trainer.export("maml", path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        Path(args[1]).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.export("maml", path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init.safetensors"]


def test_export_into_missing_folder_fails_without_writing(trainer, tmp_path):
    with pytest.raises(OSError, match="folder does not exist"):
        trainer.export("maml", tmp_path / "nope" / "init.safetensors")


def test_pt_export_keeps_metadata_beside_it_and_bare_state_dicts_load(trainer, tmp_path):
    pt = tmp_path / "init.pt"
    trainer.export("maml", pt)
    assert json.loads(sidecar_path(pt).read_text())["algorithm"] == "maml"
    bare = tmp_path / "bare.pt"
    torch.save(OrderedDict((k, v.detach()) for k, v in trainer.runs["maml"].params.items()), bare)
    params, meta, model = load_initialization(bare)
    assert model.spec()["sizes"] == [1, 40, 40, 1]


def test_unsupported_suffix_is_refused(trainer, tmp_path):
    with pytest.raises(InitializationError, match="use .safetensors or .pt"):
        export_initialization(tmp_path / "x.bin", trainer.runs["maml"].params, {})
