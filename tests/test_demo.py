"""The README's main job, `pcmhil demo`, end to end on a few images: the default MLP programmed into
the co-simulated 256x256 chip (program-and-verify), inference through the cosim and the twin, and
the layer-by-layer comparison that must be exact."""

import json

import pytest

from pcmhil.host.cli import main

pytestmark = pytest.mark.cosim


def test_demo_runs_the_default_network_through_the_cosim_exactly_like_the_twin(capsys):
    assert main(["demo", "--images", "24", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 24 and report["mode"] == "transaction"
    assert report["predictions_sha256"]["cosim"] == report["predictions_sha256"]["twin"]
    assert report["cosim_accuracy"] == report["twin_accuracy"]
    assert report["all_layers_equal"] is True
    assert [layer["equal"] for layer in report["layers"]] == [True] * len(report["layers"])
    assert report["float_accuracy"] >= 0.9  # 24 digits: the trained MLP gets nearly all right
    assert report["cosim_accuracy"] >= report["float_accuracy"] - 2 / 24
