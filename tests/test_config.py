"""Config system: YAML + extends + overrides, typed validation with origins, dump/load, hash."""
import textwrap

import pytest
import yaml

from imgtrain import config as C


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def base(tmp_path):
    write(tmp_path / "base.yaml", """\
        data:
          path: /data/cifar10
          batch_size: 128
        optim:
          name: sgd
          lr: 0.1
        """)
    return write(tmp_path / "exp.yaml", """\
        extends: base.yaml
        model:
          name: vit_tiny_patch16_224
          img_size: 32
        optim:
          lr: 3e-4
        """)


def test_extends_and_typed_values(base):
    cfg = C.load(base)
    assert cfg.name == "exp"
    assert cfg.data.path == "/data/cifar10" and cfg.data.batch_size == 128
    assert cfg.optim.name == "sgd"  # from the base
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # 3e-4 is a float, not YAML 1.1's str
    assert cfg.model.img_size == 32


def test_overrides_are_yaml_typed(base):
    cfg = C.load(base, ["optim.lr=1e-2", "data.num_workers=0", "model.reinit=[head, stem.*]",
                        "model.kwargs.dim=256", "trainer.clip_grad=null", "sched.warmup_epochs=1"])
    assert cfg.optim.lr == 0.01
    assert cfg.data.num_workers == 0
    assert cfg.model.reinit == ["head", "stem.*"]
    assert cfg.model.kwargs == {"dim": 256}
    assert cfg.trainer.clip_grad is None
    assert cfg.sched.warmup_epochs == 1.0 and isinstance(cfg.sched.warmup_epochs, float)


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    p = write(tmp_path / "bad.yaml", """\
        data:
          path: x
        optim:
          name: adam
          lrr: 0.1
        """)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert "optim.lrr" in msg and f"{p.resolve()}:5" in msg and "did you mean 'optim.lr'" in msg


def test_a_section_check_names_the_file_and_line_of_its_key(tmp_path):
    """optim.name is checked against timm by the optim section itself: its error names where it was set."""
    p = write(tmp_path / "bad.yaml", """\
        data:
          path: x
        optim:
          lr: 0.1
          name: adamx
        """)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    msg = str(e.value)
    assert msg.startswith("optim.name: 'adamx' is not an optimizer") and msg.endswith(f"[{p.resolve()}:5]")
    with pytest.raises(C.ConfigError, match=r"optim.alpha: .* \[override 'optim.alpha=0.9'\]$"):
        C.load(p, ["optim.name=adam", "optim.alpha=0.9"])


def test_unknown_key_in_override_names_the_override(base):
    with pytest.raises(C.ConfigError, match=r"unknown config key 'trainer.epocs' \[override 'trainer.epocs=3'\].*trainer.epochs"):
        C.load(base, ["trainer.epocs=3"])


def test_unknown_section(base):
    with pytest.raises(C.ConfigError, match="unknown config key 'optimizer'.*did you mean 'optim'"):
        C.load(base, ["optimizer.lr=1"])


@pytest.mark.parametrize("override, pattern", [
    ("data.batch_size=abc", r"data.batch_size: expected int, got 'abc'.*override 'data.batch_size=abc'"),
    ("data.batch_size=1.5", r"data.batch_size: expected int, got 1.5"),
    ("trainer.deterministic=1", r"trainer.deterministic: expected bool"),
    ("optim.lr=fast", r"optim.lr: expected float"),
    ("model.reinit=head", r"model.reinit: expected list of str"),
    ("data.mean=[0.5, x, 0.5]", r"data.mean\[1\]: expected float"),
    ("optim.name=adamm", r"optim.name: 'adamm' is not an optimizer timm knows; did you mean 'adam'"),
    ("dist.zero_stage=4", r"dist.zero_stage: 4 is not one of 0, 1, 2, 3"),
    ("data=3", r"data: expected a mapping"),
    ("optim.lr", r"expected key=value"),
])
def test_wrong_types_and_choices(base, override, pattern):
    with pytest.raises(C.ConfigError, match=pattern):
        C.load(base, [override])


def test_wrong_type_in_file_names_line(tmp_path):
    p = write(tmp_path / "t.yaml", "data:\n  path: x\n  img_size: big\n")
    with pytest.raises(C.ConfigError, match=r"data.img_size: expected int, got 'big' .*t.yaml:3"):
        C.load(p)


def test_missing_required_value(tmp_path):
    p = write(tmp_path / "t.yaml", "model:\n  name: resnet18\n")
    with pytest.raises(C.ConfigError, match=r"missing required value 'data.path'.*data.path=\.\.\."):
        C.load(p)
    assert C.load(p, ["data.path=/d"]).data.path == "/d"


def test_bad_files(tmp_path):
    with pytest.raises(C.ConfigError, match="cannot read config file"):
        C.load(tmp_path / "nope.yaml")
    p = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(C.ConfigError, match="must hold a mapping"):
        C.load(p)
    p = write(tmp_path / "broken.yaml", "data: [\n")
    with pytest.raises(C.ConfigError, match="broken.yaml: invalid YAML"):
        C.load(p)
    p = write(tmp_path / "loop.yaml", "extends: loop.yaml\n")
    with pytest.raises(C.ConfigError, match="loops back"):
        C.load(p)
    p = write(tmp_path / "missing_base.yaml", "extends: gone.yaml\n")
    with pytest.raises(C.ConfigError, match=r"missing_base.yaml:1: extends 'gone.yaml'"):
        C.load(p)


def test_child_mapping_replaces_only_its_keys_and_origins_follow(tmp_path, base):
    # a value overridden in the child reports the child's line, not the base's
    write(tmp_path / "child.yaml", "extends: exp.yaml\ndata:\n  batch_size: x\n")
    with pytest.raises(C.ConfigError, match=r"child.yaml:3"):
        C.load(tmp_path / "child.yaml")


def test_dump_round_trip(base, tmp_path):
    cfg = C.load(base, ["model.kwargs.dim=256", "data.mean=[0.5,0.5,0.5]", "dist.deepspeed={zero_optimization: {stage: 2}}"])
    out = tmp_path / "resolved.yaml"
    out.write_text(C.to_yaml(cfg))
    again = C.load(out)
    assert again == cfg
    assert C.config_hash(again) == C.config_hash(cfg)
    assert yaml.safe_load(out.read_text())["optim"]["lr"] == 3e-4


def test_hash_stable_across_key_order_and_origin(tmp_path):
    a = write(tmp_path / "a.yaml", "name: x\ndata: {path: /d, batch_size: 32}\noptim: {lr: 0.01, name: sgd}\n")
    b = write(tmp_path / "b.yaml", "name: x\noptim: {name: sgd}\ndata: {batch_size: 32, path: /d}\n")
    ha, hb = C.config_hash(C.load(a)), C.config_hash(C.load(b, ["optim.lr=1e-2"]))
    assert ha == hb and len(ha) == 12
    assert C.config_hash(C.load(b, ["optim.lr=0.02"])) != ha
    # paths, workers and logging cadence do not change results, so they do not change the hash
    assert C.config_hash(C.load(a, ["data.num_workers=7", "output.root=/elsewhere", "trainer.log_every_steps=1"])) == ha
    # an int written where a float is expected gives the same value and hash
    assert C.config_hash(C.load(a, ["optim.lr=0.01"])) == ha


def test_keys_added_later_keep_existing_hashes():
    """A key added with config._added is out of the hash while at its default, so existing runs keep their
    hash and run id (and still resume). The pinned value is this config's hash before model.unfreeze_at_epoch
    existed: if it changes, a new key was added without _added (or the hash itself changed)."""
    raw = {"name": "x", "data": {"path": "/d", "batch_size": 32}, "optim": {"lr": 0.01, "name": "sgd"}}
    assert C.config_hash(C.from_dict(raw)) == "5550292311ae"
    added = [f"{s}.{f.name}" for s, sec in C._fields(C.Config).items() if hasattr(sec[0], "__dataclass_fields__")
             for f in C.dataclasses.fields(sec[0]) if f.metadata.get("hash_if_set")]
    assert "model.unfreeze_at_epoch" in added
    # set to a non-default value, an added key is part of the hash like any other
    assert C.config_hash(C.from_dict(raw, overrides=["model.unfreeze_at_epoch=2"])) != "5550292311ae"
    assert C.config_hash(C.from_dict(raw, overrides=["model.unfreeze_at_epoch=null"])) == "5550292311ae"


def test_flatten_and_check_key():
    flat = C.flatten(C.Config())
    assert flat["optim.lr"] == 1e-3 and "model.kwargs" in flat and "data.path" in flat
    C.check_key("optim.lr")
    C.check_key("model.kwargs.anything")
    with pytest.raises(C.ConfigError, match="did you mean 'model.activation'"):
        C.check_key("model.activaton", "grid axis")


# issue 20: what used to pass silently or fail minutes later with a bare exception

def test_duplicate_keys_are_errors_with_file_and_line(tmp_path):
    path = write(tmp_path / "dup.yaml", """\
        data:
          path: /data/x
        trainer:
          epochs: 3
        trainer:
          seed: 1
        """)
    with pytest.raises(C.ConfigError, match=r"dup\.yaml:5: duplicate key 'trainer' \(first at line 3\)"):
        C.load(path)
    path = write(tmp_path / "dup2.yaml", """\
        data:
          path: /data/x
        optim:
          lr: 0.1
          lr: 0.2
        """)
    with pytest.raises(C.ConfigError, match=r"dup2\.yaml:5: duplicate key 'lr' \(first at line 4\)"):
        C.load(path)
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):  # overrides and sweep files share the loader
        C.parse_value("{a: 1, a: 2}")


def test_a_sweep_file_with_a_duplicate_key_names_it(tmp_path):
    from imgtrain.sweep import spec as S
    path = write(tmp_path / "g.yaml", """\
        config: jobs/configs/digits.yaml
        grid:
          optim.lr: [0.1]
        grid:
          optim.name: [sgd]
        """)
    with pytest.raises(S.SpecError, match="duplicate key 'grid'"):
        S.load_spec(path, root=str(tmp_path))


@pytest.mark.parametrize("override, words", [
    ("trainer.epochs=0", "trainer.epochs: 0 epochs; it must be at least 1"),
    ("trainer.epochs=-1", "trainer.epochs: -1 epochs"),
    ("data.batch_size=0", "data.batch_size: 0 samples per rank"),
    ("trainer.grad_accum=0", "trainer.grad_accum: 0 micro-batches"),
    ("data.img_size=0", "data.img_size: 0 pixels"),
    ("data.num_workers=-1", "data.num_workers: -1 processes; it must be at least 0"),
    ("optim.lr=.nan", "optim.lr: nan is not a finite number"),
    ("optim.weight_decay=.inf", "optim.weight_decay: inf is not a finite number"),
    ("optim.lr=-0.1", "optim.lr: -0.1 learning rate"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction: 1.5 is a fraction in [0, 1]"),
])
def test_values_a_run_cannot_use_are_config_errors(base, override, words):
    with pytest.raises(C.ConfigError) as e:
        C.load(base, [override])
    assert words in str(e.value) and f"override '{override}'" in str(e.value)
