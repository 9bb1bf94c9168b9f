"""TOML run configs: valid files load, every bad field is an error naming it, round trip."""
import pytest

from mesu_snn.config import ConfigError, RunConfig, dump_toml, load_config, parse_config
from mesu_snn.rules.registry import RULES

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
        assert cfg.rule.name in RULES
