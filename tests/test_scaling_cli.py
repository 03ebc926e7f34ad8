"""The annotation CLI under SLURM (its part from the job's variables, announced in the first line)
and ``make annotate ARGS=...`` options mixed with config overrides."""
from __future__ import annotations

import pytest

from annotate.cli import choose_part, main as annotate_main, parse_args, slurm_part
from annotate.config import ConfigError
from test_annotate_pipeline import make_tiny_dataset


def test_an_array_task_takes_its_part_counted_from_the_first_array_index(capsys):
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}  # an array task is also a one-task step
    assert choose_part(None, env) == (2, 4)
    assert capsys.readouterr().out == "annotate: part 2/4 from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT " \
                                      "(pass --part to choose another)\n"
    assert slurm_part({"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}) == ((5, 8), "SLURM_PROCID/SLURM_NTASKS")


def test_part_wins_over_slurm_and_outside_slurm_the_part_is_all(capsys):
    assert choose_part("1/3", {"SLURM_PROCID": "5", "SLURM_NTASKS": "8"}) == (1, 3)
    assert choose_part(None, {}) == (0, 1)
    assert capsys.readouterr().out == ""


def test_an_array_with_gaps_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="SLURM_ARRAY_TASK_ID=9 with SLURM_ARRAY_TASK_COUNT=4 .*--array=0-3"):
        slurm_part({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"})


@pytest.mark.shared
def test_a_slurm_task_annotates_its_part_and_says_so_first(tmp_path, monkeypatch, capsys):
    make_tiny_dataset(tmp_path / "data", 4, long_side=64)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    code = annotate_main(["--dataset", "csv", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                          "--no-progress", "dataset.mos_range=[0,100]"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith("annotate: part 1/2 from SLURM_PROCID/SLURM_NTASKS")
    assert lines[1] == f"annotate csv part 1/2 -> {tmp_path / 'out'}" and "selected 2," in lines[2]


def test_make_annotate_args_may_mix_options_and_overrides():
    # make annotate: ... --config C ARGS, where ARGS may hold overrides and options in any order
    args = parse_args(["--dataset", "csv", "--root", "r", "--out", "o", "--config", "c",
                       "a=1", "--engine=ray", "b=2", "--ray-address", "auto", "c=3"])
    assert (args.engine, args.ray_address, args.overrides, args.part) == ("ray", "auto", ["a=1", "b=2", "c=3"], None)
