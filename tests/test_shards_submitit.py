"""The optional job-array path, run with submitit's local executor (never auto-detected)."""

import pytest
from sourcedata import write_cifar10

from shards.cli import main
from shards.manifest import load_manifest


@pytest.mark.multiproc
@pytest.mark.slow
def test_submitit_local_array_gives_the_same_shards(tmp_path, capsys):
    write_cifar10(tmp_path / "src", n_per_batch=6, n_test=6)
    common = ["cifar10", str(tmp_path / "src")]
    assert main(["pack", *common, str(tmp_path / "plain"), "--shard-size", "5"]) == 0
    assert main(["pack", *common, str(tmp_path / "array"), "--shard-size", "5",
                 "--submitit-array", "2", "--submitit-cluster", "local"]) == 0, capsys.readouterr().err
    plain, array = load_manifest(tmp_path / "plain"), load_manifest(tmp_path / "array")
    plain.pop("created"), array.pop("created")
    assert array == plain and len(array["splits"]["train"]["shards"]) >= 5
    assert not (tmp_path / "array" / ".submitit").exists()  # job logs are removed after success
