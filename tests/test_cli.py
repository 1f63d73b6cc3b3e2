"""The command line: JSON layouts and clear errors."""

from __future__ import annotations

import json

import pytest

from pcmhil.host.cli import main


def run_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_device_characterize_json_and_plot(capsys, tmp_path):
    plot = tmp_path / "char.png"
    result = run_json(capsys, "device", "characterize", "--preset", "hermes-2dev", "--devices", "4096",
                      "--seed", "2", "--json", "--plot", str(plot))
    assert set(result) == {"preset", "g_max_us", "t0_s", "points", "drift"}
    assert result["preset"] == "hermes-2dev" and result["g_max_us"] == 20.7 and result["t0_s"] == 300.0
    assert [p["x"] for p in result["points"]] == [0.05, 0.1, 0.25, 0.5, 0.75, 1.0]
    assert all(set(p) == {"x", "prog_sigma_us", "nu_mean", "nu_std"} for p in result["points"])
    assert len(result["drift"]) == 24
    assert {d["t_s"] for d in result["drift"]} == {1.0, 3600.0, 86400.0, 365 * 86400.0}
    assert plot.stat().st_size > 10_000


def test_unknown_preset_is_one_clear_error(capsys):
    assert main(["device", "characterize", "--preset", "nope", "--devices", "16"]) == 2
    assert "preset must be one of" in capsys.readouterr().err


def test_mvm_twin_json(capsys):
    result = run_json(capsys, "mvm", "--backend", "twin", "--rows", "16", "--cols", "8",
                      "--count", "5", "--seed", "3", "--json")
    assert set(result) == {"backend", "mode", "rows", "cols", "count", "seconds", "mvm_per_s",
                           "codes_sha256"}
    again = run_json(capsys, "mvm", "--backend", "twin", "--rows", "16", "--cols", "8",
                     "--count", "5", "--seed", "3", "--json")
    assert again["codes_sha256"] == result["codes_sha256"]
    other = run_json(capsys, "mvm", "--backend", "twin", "--rows", "16", "--cols", "8",
                     "--count", "5", "--seed", "4", "--json")
    assert other["codes_sha256"] != result["codes_sha256"]


def test_mvm_read_mode_four_phase(capsys):
    """--read-mode four-phase runs four windows per MVM: other codes than one-phase, the same
    codes again for the same seed; an unknown read mode is refused with the choices."""
    argv = ("mvm", "--backend", "twin", "--rows", "16", "--cols", "8", "--count", "5", "--json")
    one = run_json(capsys, *argv)
    four = run_json(capsys, *argv, "--read-mode", "four-phase")
    assert four["codes_sha256"] != one["codes_sha256"]
    assert run_json(capsys, *argv, "--read-mode", "four-phase")["codes_sha256"] == four["codes_sha256"]
    assert run_json(capsys, *argv, "--read-mode", "one-phase")["codes_sha256"] == one["codes_sha256"]
    with pytest.raises(SystemExit) as exit_info:
        main(["mvm", "--read-mode", "2-phase"])
    assert exit_info.value.code == 2
    assert "argument --read-mode: invalid choice: '2-phase' (choose from" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["mvm", "--rows", "6"], "rows must be an integer multiple of 4"),
    (["mvm", "--count", "0"], "count must be an integer >= 1"),
    (["mvm", "--preset", "bogus", "--rows", "8", "--cols", "8"], "preset must be one of"),
    (["bench", "cosim", "--count", "0"], "count must be an integer within [1, 10000000], not 0"),
    (["bench", "cosim", "--cycle-count", "-1"], "cycle_count must be an integer within [1, 10000000]"),
])
def test_mvm_bad_arguments(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


SEEDED_COMMANDS = [["mvm"], ["infer", "--model", "digits-mlp"], ["device", "characterize", "--preset", "pcm"],
                   ["bench", "model"], ["train", "--model", "digits-mlp", "--out", "x"]]


@pytest.mark.parametrize("command", SEEDED_COMMANDS, ids=lambda argv: argv[0])
@pytest.mark.parametrize("seed", ["-1", "2.5", str(2**64)])
def test_every_seed_option_refuses_what_no_rng_takes(capsys, command, seed):
    """A negative, fractional or too large --seed is one argparse error naming the range, on
    every command that takes one (not a traceback from numpy's generator)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--seed", seed])
    assert exit_info.value.code == 2
    assert f"argument --seed: seed must be an integer in [0, 2**64), not '{seed}'" in capsys.readouterr().err


def test_library_entry_points_check_their_counts_and_seed():
    """The functions behind `pcmhil mvm` and `pcmhil bench cosim`, called directly."""
    from pcmhil.errors import ConfigError
    from pcmhil.host.bench import bench_cosim
    from pcmhil.host.random_mvm import random_mvm

    with pytest.raises(ConfigError, match=r"seed must be an integer within \[0, 18446744073709551615\], "
                                          r"not -3"):
        random_mvm("twin", rows=8, cols=8, count=1, seed=-3)
    with pytest.raises(ConfigError, match=r"batch must be an integer within \[1, 10000000\], not 0"):
        bench_cosim(rows=8, cols=8, batch=0)
