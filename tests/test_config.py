"""TOML run configs: valid files load, every bad field is an error naming it, round trip."""
import pytest

from mesu_snn.config import ConfigError, RunConfig, dump_toml, load_config, parse_config

GOOD = """
seed = 3
[data]
dataset = "mnist"
train_per_task = 300
test_per_task = 200
[stream]
kind = "permuted"
n_tasks = 10
batch_size = 16
[encoder]
kind = "current"
num_steps = 10
gain = 2.0
[model]
hidden = [64]
[rule]
name = "mesu"
memory = 3000
sigma_prior = 0.1
[schedule]
eval_every = 50
"""


def _write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_config_loads_with_types(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.seed == 3 and cfg.data.dataset == "mnist" and cfg.stream.n_tasks == 10
    assert cfg.rule.name == "mesu" and cfg.rule.params == {"memory": 3000.0, "sigma_prior": 0.1}
    assert isinstance(cfg.rule.params["memory"], float)
    assert cfg.schedule.eval_every == 50 and cfg.model.hidden == [64]


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    again = load_config(_write(tmp_path, dump_toml(cfg), "d.toml"))
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("section,line,field", [
    ("stream", "n_tasks = 0", "stream.n_tasks"),
    ("stream", "batch_size = 2.5", "stream.batch_size"),
    ("stream", "kind = \"rotated\"", "stream.kind"),
    ("stream", "transition = 1.5", "stream.transition"),
    ("data", "dataset = \"cifar\"", "data.dataset"),
    ("data", "train_per_task = -1", "data.train_per_task"),
    ("encoder", "num_steps = \"ten\"", "encoder.num_steps"),
    ("model", "hidden = [64, 0]", "model.hidden[1]"),
    ("model", "beta = 1.5", "model.beta"),
    ("model", "readout = \"rate\"", "model.readout"),
    ("model", "sigma_init = 0", "model.sigma_init"),
    ("rule", "memory = -5", "rule.memory"),
    ("rule", "lr = 0.1", "rule.lr"),
    ("schedule", "eval_samples = 0", "schedule.eval_samples"),
    ("schedule", "ood = 1", "schedule.ood"),
    ("schedule", "colour = 1", "schedule.colour"),
])
def test_bad_field_named_in_error(tmp_path, section, line, field):
    text = GOOD.replace(f"[{section}]\n", f"[{section}]\n{line}\n")
    if line.split(" = ")[0] in GOOD.split(f"[{section}]")[1].split("[")[0]:
        # replace the existing key instead of duplicating it (duplicate keys are invalid TOML)
        key = line.split(" = ")[0]
        body = GOOD.split(f"[{section}]\n")[1].split("\n[")[0]
        new_body = "\n".join(line if b.startswith(key + " =") else b for b in body.split("\n"))
        text = GOOD.replace(body, new_body)
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert f"config field {field}:" in str(e.value)
    assert "c.toml" in str(e.value)


def test_missing_rule_unknown_section_and_cross_checks():
    with pytest.raises(ConfigError, match="rule"):
        parse_config({"seed": 0})
    with pytest.raises(ConfigError, match="rule.name"):
        parse_config({"rule": {"memory": 1.0}})
    with pytest.raises(ConfigError, match="config field optimiser"):
        parse_config({"rule": {"name": "sgd"}, "optimiser": {}})
    with pytest.raises(ConfigError, match="config field seed"):
        parse_config({"seed": -1, "rule": {"name": "sgd"}})
    with pytest.raises(ConfigError, match="encoder.kind"):
        parse_config({"rule": {"name": "sgd"}, "data": {"dataset": "nmnist"}})
    with pytest.raises(ConfigError, match="encoder.kind"):
        parse_config({"rule": {"name": "sgd"}, "encoder": {"kind": "frames"}})
    with pytest.raises(ConfigError, match="rule.base"):
        parse_config({"rule": {"name": "ewc", "base": "rmsprop"}})
    cfg = parse_config({"rule": {"name": "ewc", "ewc_lambda": 10, "fisher_samples": 50}})
    assert isinstance(cfg, RunConfig) and cfg.rule.params["fisher_samples"] == 50


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(IsADirectoryError):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "seed = [\n"))
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_every_shipped_config_is_valid():
    from pathlib import Path
    configs = sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.toml"))
    assert len(configs) >= 2
    for path in configs:
        cfg = load_config(path)
        assert cfg.rule.name in ("mesu", "bgd", "sgd", "adam", "ewc", "si")


def test_no_shipped_config_hard_codes_a_data_root():
    """Shipped configs leave the data folder to the usual resolution (--data-root, $MESU_SNN_DATA,
    data/): no ``data.root`` and no path of this repository's CI layout."""
    import tomllib
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    configs = [p for p in repo.rglob("*.toml") if p.name != "pyproject.toml" and ".venv" not in p.parts
               and "runs" not in p.relative_to(repo).parts[:1]]
    assert len(configs) >= 4
    for path in configs:
        raw = tomllib.loads(path.read_text())
        assert "root" not in raw.get("data", {}), path
        assert "shared/data" not in path.read_text(), path


def test_data_root_resolution_order_through_train(tmp_path, monkeypatch, capsys):
    """A config without data.root: ``--data-root`` wins over $MESU_SNN_DATA, which wins over data/;
    the error for missing files names the folder that was chosen."""
    from pathlib import Path
    from mesu_snn.cli import main
    cfg = tmp_path / "m.toml"
    cfg.write_text('[data]\ndataset = "mnist"\n[rule]\nname = "sgd"\n')
    monkeypatch.chdir(tmp_path)

    def chosen(*extra):
        assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert "not found" in err and not (tmp_path / "out").exists()
        return err
    monkeypatch.delenv("MESU_SNN_DATA", raising=False)
    assert str(Path("data") / "MNIST") in chosen()
    monkeypatch.setenv("MESU_SNN_DATA", str(tmp_path / "from_env"))
    assert "from_env" in chosen()
    err = chosen("--data-root", str(tmp_path / "from_flag"))
    assert "from_flag" in err and "from_env" not in err


def test_encoder_defaults_are_valid_for_every_kind():
    """A key the user never wrote cannot make a config invalid: each encoder kind loads with the
    defaults, ``rate`` with a gain <= 1; an explicit bad gain is still an error naming it."""
    from mesu_snn.config import ENCODERS, GAIN_DEFAULTS
    for kind in ENCODERS:
        data = {"dataset": "nmnist"} if kind == "frames" else {}
        cfg = parse_config({"data": data, "encoder": {"kind": kind}, "rule": {"name": "sgd"}})
        assert cfg.encoder.gain == GAIN_DEFAULTS[kind]
        assert parse_config(cfg.to_dict()).encoder.gain == cfg.encoder.gain      # round trip keeps it
    assert parse_config({"encoder": {"kind": "rate"}, "rule": {"name": "sgd"}}).encoder.gain == 1.0
    assert parse_config({"encoder": {"kind": "current"}, "rule": {"name": "sgd"}}).encoder.gain == 2.0
    with pytest.raises(ConfigError, match="encoder.gain.*<= 1, got 2.0"):
        parse_config({"encoder": {"kind": "rate", "gain": 2.0}, "rule": {"name": "sgd"}})


def test_list_messages_read_plainly():
    """A list field's message never says 'a list of at least 0 integers'."""
    with pytest.raises(ConfigError) as e:
        parse_config({"model": {"hidden": "64"}, "rule": {"name": "sgd"}})
    assert "model.hidden: must be a list of integers, got '64'" in str(e.value) and "at least 0" not in str(e.value)
    with pytest.raises(ConfigError, match="model.channels: must be a list of at least 1 integer, got"):
        parse_config({"model": {"channels": []}, "rule": {"name": "sgd"}})
