"""``nandoctor scan``: one bad sample among thousands, named by batch, sample and dataset index."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from nandoctor.cli import app
from nandoctor.scan import run_scan
from nandoctor.spec import validate


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(8 + 4, 5)

    def forward(self, ids, x):
        return self.lin(torch.cat([self.emb(ids).mean(1), x], 1))


def tagger_loss(model, batch):
    return F.cross_entropy(model(batch[0], batch[1]), batch[2])


def tagger(bad=None, shuffle=False, n=4000):
    g = torch.Generator().manual_seed(0)
    ids, x, y = (
        torch.randint(0, 50, (n, 6), generator=g),
        torch.randn(n, 4, generator=g),
        torch.randint(0, 5, (n,), generator=g),
    )
    if bad == "nan":
        x[2345, 2] = float("nan")
    if bad == "id":
        ids[3001, 3] = 50
    if bad == "label":
        y[77] = -3
    if bad == "extreme":
        x[3999, 0] = 1e7
    loader = DataLoader(TensorDataset(ids, x, y), batch_size=32, shuffle=shuffle, generator=g)
    return {"model": Tagger(), "data": loader, "loss": tagger_loss}


def scan(build, **options):
    options = {"max_batches": None, "with_backward": False, "extreme_factor": 1000.0, **options}
    return run_scan(validate(build, "test:build"), progress=lambda *a: None, **options)


def test_one_nan_sample_among_thousands_is_named_by_batch_sample_and_dataset_index():
    result = scan(tagger("nan"))
    assert result["batches_scanned"] == 125 and result["samples_scanned"] == 4000
    (finding,) = result["findings"]
    assert finding["code"] == "nonfinite_input"
    assert (finding["where"]["batch"], finding["where"]["sample"]) == (73, 9)
    assert result["problems"][0]["dataset_index"] == 2345


def test_ids_labels_and_extreme_values_point_at_their_sample():
    expected = {
        "id": ("index_out_of_range", "0", 3001),
        "label": ("label_out_of_range", "2", 77),
        "extreme": ("unnormalized_input", "1", 3999),
    }
    for bad, (code, tensor, index) in expected.items():
        result = scan(tagger(bad))
        assert [f["code"] for f in result["findings"]] == [code], bad
        problem = result["problems"][0]
        assert (problem["tensor"], problem["dataset_index"]) == (tensor, index), bad
        assert (problem["batch"], problem["sample"]) == divmod(index, 32), bad


def test_a_shuffled_loader_gives_no_dataset_index_and_the_model_is_untouched():
    setup = tagger("id", shuffle=True)
    before = {k: v.clone() for k, v in setup["model"].state_dict().items()}
    result = scan(setup, with_backward=True)
    assert result["problems"][0]["dataset_index"] is None and result["problems"][0]["sample"] is not None
    assert all(torch.equal(before[k], v) for k, v in setup["model"].state_dict().items())
    assert all(p.grad is None for p in setup["model"].parameters())


def test_clean_images_are_clean():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(600, 1, 8, 8, generator=g)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 1))
    data = DataLoader(TensorDataset(images, images.mean((1, 2, 3))[:, None]), batch_size=50)
    result = scan({"model": model, "data": data, "loss": lambda m, b: F.mse_loss(m(b[0]), b[1])}, with_backward=True)
    assert result["findings"] == [] and result["batches_scanned"] == 12


def test_a_nonfinite_loss_from_clean_inputs_is_traced_to_its_sample():
    g = torch.Generator().manual_seed(2)
    batches = [torch.rand(16, 3, generator=g) + 0.1 for _ in range(30)]
    batches[21][6] = torch.tensor([0.0, 0.5, 0.5])  # a hand-written log-likelihood meets log(0) here

    def loss(model, batch):
        return -(torch.log(batch) * model(batch).softmax(-1)).sum(-1).mean()

    result = scan({"model": nn.Linear(3, 3), "data": batches, "loss": loss}, max_batches=25)
    assert result["batches_scanned"] == 25 and result["batches_total"] == 25
    (problem,) = result["problems"]
    assert (problem["code"], problem["batch"], problem["sample"]) == ("forward_nonfinite", 21, 6)


def _interrupted_data():
    for index in range(20):
        if index == 5:
            raise KeyboardInterrupt
        batch = torch.randn(4, 3)
        if index == 2:
            batch[1, 0] = float("inf")
        yield batch


def build_interrupted():
    return {"model": nn.Linear(3, 1), "data": _interrupted_data(), "loss": lambda m, b: m(b).pow(2).mean()}


def test_ctrl_c_keeps_what_was_found(tmp_path):
    result = CliRunner().invoke(app, ["scan", "tests.test_scan:build_interrupted", "--format", "json"])
    assert result.exit_code == 130
    report = json.loads(result.stdout)
    assert report["interrupted"] and report["batches_scanned"] == 5
    assert report["problems"][0]["batch"] == 2 and report["problems"][0]["sample"] == 1


def test_cli_scan_text_and_exit_codes(tmp_path):
    spec = tmp_path / "data_spec.py"
    spec.write_text(
        "import torch\nfrom torch import nn\n"
        "def build(bad: bool = True):\n"
        "    x = torch.randn(64, 3)\n"
        "    if bad: x[40, 1] = float('nan')\n"
        "    return {'model': nn.Linear(3, 1), 'data': list(x.split(16)), 'loss': lambda m, b: m(b).mean()}\n"
    )
    result = CliRunner().invoke(app, ["scan", f"{spec}:build"])
    assert result.exit_code == 1 and "batch 2 sample 8" in result.stdout
    assert "batches/s" in result.stderr
    assert CliRunner().invoke(app, ["scan", f"{spec}:build", "--set", "bad=false"]).exit_code == 0
    assert CliRunner().invoke(app, ["scan", f"{spec}:build", "--max-batches", "0"]).exit_code == 2


SCAN_DATA_RAISES = """
import torch
from torch import nn


class Records(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index == 37:
            raise ValueError(f"corrupt record {index}")
        g = torch.Generator().manual_seed(index)
        x = torch.randn(4, generator=g)
        if index == 5:
            x[1] = float("nan")
        return x, torch.randint(0, 3, (), generator=g)


def build(workers: int = 0):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return {"model": model, "data": torch.utils.data.DataLoader(Records(), batch_size=8, num_workers=workers),
            "loss": lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])}
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataset_that_raises_is_the_users_error_and_what_was_found_stays(tmp_path, workers):
    import json

    from typer.testing import CliRunner

    from nandoctor.cli import app

    (tmp_path / "records.py").write_text(SCAN_DATA_RAISES)
    result = CliRunner().invoke(
        app, ["scan", f"{tmp_path / 'records.py'}:build", "--set", f"workers={workers}", "--format", "json"]
    )
    assert result.exit_code == 1 and "internal error" not in result.output, result.output  # its finding stands
    scanned = json.loads(result.stdout)
    assert scanned["stopped"]["batch"] == 4 and scanned["stopped"]["dataset_indices"] == [32, 39]
    assert "corrupt record 37" in scanned["stopped"]["error"] and "records.py" in scanned["stopped"]["error"]
    assert [f["code"] for f in scanned["findings"]] == ["nonfinite_input"]  # sample 5, found before it
