"""`bash slurm/<recipe>.sbatch --help` (issue 20): every recipe exits 0 and says what it runs (its config
file, or the packer), the resources of its own #SBATCH header and the knobs. train.sbatch and
pack_shards.sbatch used to exit 2 with a usage error; the others printed launch.sh's generic help."""
import re
import subprocess

import pytest

from conftest import ROOT

RECIPES = sorted((ROOT / "slurm").glob("*.sbatch"))


def help_of(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})  # no SLURM, no venv needed


def fixed_config(recipe) -> str | None:
    m = re.search(r"--config (jobs/configs/\S+\.yaml)", recipe.read_text())
    return m.group(1) if m else None


def test_every_recipe_is_covered():
    assert {r.name for r in RECIPES} >= {"train.sbatch", "pack_shards.sbatch", "ava_vit.sbatch"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_recipe_help_says_what_it_runs_with_which_resources(recipe):
    proc = help_of(recipe, "--help")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"slurm/{recipe.name}\n")
    for line in recipe.read_text().splitlines():  # every resource of its own header, as written
        if line.startswith("#SBATCH"):
            assert f"  {line.removeprefix('#SBATCH ')}\n" in out, line
    assert "IMGTRAIN_NPROC" in out and "IMGTRAIN_SIF" in out and "IMGTRAIN_PYTHON" in out  # the knobs
    if recipe.name == "pack_shards.sbatch":
        assert "runs: python -m shards pack KIND SRC OUT" in out
        cpus = re.search(r"^#SBATCH --cpus-per-task=(\d+)", recipe.read_text(), re.M).group(1)
        assert f"one packer with {cpus} worker(s)" in out
    elif recipe.name == "train.sbatch":
        assert "config: CONFIG, the recipe's first argument" in out and "digits.yaml" in out
    else:
        config = fixed_config(recipe)
        assert config and (ROOT / config).is_file()
        assert f"config: {config}\n" in out
        assert f"jobs/train.py --config {config}" in out
        first = (ROOT / config).read_text().splitlines()[0].removeprefix("# ")
        assert first in out  # the config's own description


def test_generic_recipe_help_names_the_config_given():
    proc = help_of(ROOT / "slurm/train.sbatch", "jobs/configs/digits.yaml", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "config: jobs/configs/digits.yaml\n" in proc.stdout
    assert "jobs/train.py --config jobs/configs/digits.yaml" in proc.stdout


def test_launcher_help_and_usage_errors_are_unchanged():
    proc = help_of(ROOT / "slurm/launch.sh", "--help")
    assert proc.returncode == 0 and "Environment:" in proc.stdout
    assert help_of(ROOT / "slurm/train.sbatch").returncode == 2  # no CONFIG: still a usage error
    assert help_of(ROOT / "slurm/pack_shards.sbatch", "ava").returncode == 2


def test_recipe_help_needs_only_the_standard_library():
    """imgtrain/recipe.py writes the help: with site-packages off (-S: no yaml, no torch, no venv) it prints
    exactly what `bash slurm/<recipe>.sbatch --help` prints, so the help works on a fresh clone."""
    import sys
    recipe = ROOT / "slurm/ava_vit.sbatch"
    proc = subprocess.run([sys.executable, "-S", "-m", "imgtrain.recipe", "help", "slurm/ava_vit.sbatch",
                           "--config", fixed_config(recipe)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == help_of(recipe, "--help").stdout
    proc = subprocess.run([sys.executable, "-S", "-m", "imgtrain.recipe", "resources", "slurm/ava_vit.sbatch"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines()[:3] == ["nodes=1", "cpus_per_task=32", "gpus=4"], proc.stderr


@pytest.mark.parametrize("value,count", [("4", 4), ("a100:4", 4), ("gpu:a100:4", 4), ("0,1,2", 3), ("", None),
                                         ("NoDevFiles", None)])
def test_gpu_counts_read_like_slurm(value, count):
    from imgtrain.recipe import count_gpus
    assert count_gpus(value) == count
