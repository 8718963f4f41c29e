"""Data sets by URL (https://..., pipe:...): staged once per node into scratch through webdataset's gopen,
every shard checked against the manifest's sha256, resumed shard by shard, then trained on as a folder."""
import functools
import http.server
import shutil
import threading

import pytest

from conftest import PY, ROOT, run_cmd
from shards.remote import RemoteError, fetch_manifest, stage
from imgtrain.sweep.preflight import data_problems


@pytest.fixture
def served(digits_shards, tmp_path):
    """The digits shards behind a real HTTP server on localhost (a copy: tests change files)."""
    root = tmp_path / "www"
    shutil.copytree(digits_shards, root / "digits16")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/digits16", root / "digits16"
    server.shutdown()
    server.server_close()


def test_stage_copies_verifies_and_resumes_shard_by_shard(served, digits_shards, tmp_path):
    url, served_dir = served
    logs = []
    local = stage(url, tmp_path / "scratch", log=logs.append)
    tars = sorted(p.name for p in digits_shards.glob("*.tar"))
    assert sorted(p.name for p in local.glob("*.tar")) == tars and len(tars) > 3
    assert all((local / t).read_bytes() == (digits_shards / t).read_bytes() for t in tars)
    assert f"staging {len(tars)} of {len(tars)} shards" in logs[0]
    logs.clear()
    assert stage(url, tmp_path / "scratch", log=logs.append) == local and logs == []  # complete: nothing copied
    (local / tars[1]).unlink()  # an interrupted copy: the other shards are kept
    stage(url, tmp_path / "scratch", log=logs.append)
    assert f"staging 1 of {len(tars)} shards" in logs[0]
    # the server's copy of a shard differs from its manifest: refused, nothing half-copied is kept
    (local / tars[2]).unlink()
    (served_dir / tars[2]).write_bytes((served_dir / tars[2]).read_bytes()[:-512])
    with pytest.raises(RemoteError, match=f"{tars[2]}: .* the manifest says .*another version"):
        stage(url, tmp_path / "scratch", log=logs.append)
    assert not (local / tars[2]).exists() and not list(local.glob(".*.tmp-*"))


def test_pipe_urls_and_the_preflight(served, digits_shards, tmp_path):
    url, _ = served
    local = stage(f"pipe:cat {digits_shards}/{{}}", tmp_path / "scratch", log=lambda m: None)
    assert (local / "manifest.json").exists()
    assert fetch_manifest(url)["task"] == "classification"
    assert data_problems(url, "classification", "train") == []  # the manifest only: no shard is copied
    bad = data_problems(url + "-nope", "classification", "train")
    assert len(bad) == 1 and bad[0].startswith(f"data.path: {url}-nope/manifest.json: cannot be read")
    with pytest.raises(RemoteError, match="needs {} where the file name goes"):
        stage("pipe:cat /nowhere", tmp_path / "scratch")


@pytest.mark.slow
def test_a_run_trains_on_a_data_set_by_url(served, tmp_path):
    url, _ = served
    proc = run_cmd([PY, ROOT / "jobs/train.py", "--config", ROOT / "tests/configs/tiny_digits.yaml",
                    f"data.path={url}", "trainer.epochs=1", f"output.root={tmp_path}", "output.run=r"],
                   env={"TMPDIR": str(tmp_path / "scratch"), "SLURM_TMPDIR": ""})
    assert "staging" in proc.stdout and (tmp_path / "runs/r/DONE").exists()
    assert list((tmp_path / "scratch/imgtrain-cache/shards").glob("*/train-000000.tar"))
