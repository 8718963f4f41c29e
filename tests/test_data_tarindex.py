"""The shard index: the fast plain-ustar reader gives tarfile's members exactly, and anything it does not
handle (pax or GNU long-name headers, links, truncation, bad checksums) goes to tarfile."""
import io
import tarfile

import pytest

from imgtrain.data.tarindex import _plain_members, index_shard


def _tar(path, names, fmt=tarfile.PAX_FORMAT, sizes=None):
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes(range(256)) * (sizes[i] if sizes else (i % 5 + 1))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _reference(path):
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def test_plain_shards_are_read_without_tarfile_and_match_it(tmp_path):
    names = [f"train/{i:06d}.{ext}" for i in range(50) for ext in ("png", "cls", "json")]
    path = _tar(tmp_path / "s.tar", names, sizes=[0, 1, 3] * 50)  # empty members too
    assert _plain_members(path) == _reference(path)
    index = index_shard(path)
    assert index.error is None and len(index) == 50
    assert index.keys[0] == "train/000000" and set(index.members[0]) == {"png", "cls", "json"}
    assert index.members[1]["cls"] == _reference(path)[4][1:]


@pytest.mark.parametrize("case", ["non-ascii name", "long name", "gnu long name", "symlink", "truncated",
                                  "bad checksum"])
def test_other_tars_fall_back_to_tarfile(tmp_path, case):
    path = tmp_path / "s.tar"
    if case == "non-ascii name":
        _tar(path, ["train/000000.png", "train/héllo.png"])  # a pax header carries the name
    elif case == "long name":
        _tar(path, ["train/000000.png", "a" * 90 + "/" + "b" * 60 + ".png"])  # over 100 characters: pax too
    elif case == "gnu long name":
        _tar(path, ["x" * 300 + ".png"], fmt=tarfile.GNU_FORMAT)
    elif case == "symlink":
        with tarfile.open(path, "w") as tar:
            link = tarfile.TarInfo("train/000001.png")
            link.type, link.linkname = tarfile.SYMTYPE, "train/000000.png"
            tar.addfile(link)
    else:
        _tar(path, [f"train/{i:06d}.png" for i in range(4)])
        data = bytearray(path.read_bytes())
        if case == "truncated":
            data = data[:512 * 9 + 100]
        else:
            data[512 * 2 + 10] ^= 0xFF  # the second header's name
        path.write_bytes(bytes(data))
    assert _plain_members(path) is None
    if case in ("non-ascii name", "long name", "gnu long name", "symlink"):
        index = index_shard(path)
        assert [(f"{k}.png" if "png" in m else k) for k, m in zip(index.keys, index.members)] == \
            [n for n, _, _ in _reference(path)]
    elif case == "truncated":  # three whole samples, the fourth's data cut
        with pytest.warns(UserWarning, match="damaged"):
            index = index_shard(path)
        assert index.error is not None and index.keys == [f"train/{i:06d}" for i in range(3)]
    else:  # tarfile stops at the bad header: the samples after it are missing (the loader counts them bad)
        assert index_shard(path).keys == ["train/000000"]
